"""Soft Rasterizer (Liu et al. 2019): probabilistic coverage and a softmax depth blend.

For pixel i and candidate face j (see DESIGN §5)::

    D_ij = sigmoid(δ_ij d²_ij / σ)            δ = +1 inside the projected face, −1 outside
    A_i  = 1 − Π_j (1 − D_ij)                  silhouette
    C_i  = Σ_j w_ij C_ij + w_b C_b             colour
    w_ij = D_ij e^{z_ij/γ} / (Σ_k D_ik e^{z_ik/γ} + e^{ε/γ}),   w_b = e^{ε/γ} / (same)

* ``d`` is the screen-space distance from the pixel centre to the face's boundary (its
  nearest edge), in PyTorch3D's isotropic NDC units: the shorter image side spans 2 units,
  so one pixel is 2 / min(W, H) along both axes (plain NDC for square images).
* ``z_ij = (far − z)/(far − near)`` where z is the eye-space depth (clip w) of the face at
  the pixel, from its perspective-correct barycentrics clamped to the face (negative
  ones set to 0, renormalised), so z stays inside the face's depth range outside it.
* ``C_ij`` interpolates a per-vertex colour field (V, 3) with the same clamped
  barycentrics: shade at the vertices (:class:`VertexShader`) or pass any colours.

Two phases. ``select`` (not differentiable; call it whenever the geometry changed) bins
faces into 8×8-pixel tiles by their screen box dilated by the distance where
D < ``cutoff`` (r = sqrt(σ ln(1/cutoff − 1))), then keeps for each pixel the ``K``
faces nearest in depth among those inside or within r: ``candidates`` (H, W, K) int32,
−1 padded, plus a flat list of the (pixel, face) pairs grouped by pixel. It also stores
the softmax shift m_i = max(ε, max_j z_ij), so γ = 1e-4 never overflows (the blend does
not depend on m, so it is a constant for the gradient). ``forward`` (differentiable in
the clip coordinates and vertex colours) recomputes everything from the clip coordinates:
one thread per pair (a top-level loop, so exp/log differentiate correctly in Taichi
1.7.4, TAICHI_NOTES §6) writes log(1 − D) (a stable softplus), the softmax weight and the
weighted colour; a per-pixel pass sums them (Π(1 − D) = exp Σ log(1 − D)) and has a
hand-written backward. Cost O(pixels·K + faces), no atomics in the forward pass.

Faces with a vertex on the camera side of the near plane (z_clip < −w_clip) or entirely
beyond the far plane are not drawn (there is no clipping in this mode). Degenerate faces
(zero area, edge-on) are drawn as their edges: outside everywhere, finite gradients.
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..camera import check_depth_range, check_resolution
from ..errors import UserError
from .interpolate import pixel_ndc
from .shading import MODELS, surface_radiance

TILE = 8  # binning tile edge in pixels
MAX_PAIRS = 1 << 30  # (pixel, candidate) slots H·W·K; more would not fit int32 indices
EXP_LIMIT = 60.0  # largest softmax exponent (only reached with a stale shift)


@ti.func
def _screen(c: ti.template(), scale):
    return ti.Vector([c[0] / c[3] * scale[0], c[1] / c[3] * scale[1]])


@ti.func
def face_geometry(c0: ti.template(), c1: ti.template(), c2: ti.template(), p, scale):
    """For NDC point ``p`` and clip vertices c0 c1 c2 (all w > 0), with ``scale`` the NDC →
    isotropic-screen factors: (d², inside, λ) — squared distance to the nearest edge,
    whether p is strictly inside, and the perspective-correct barycentrics clamped to the
    face. Uses only select (no min/max), so it is safe under reverse-mode AD anywhere."""
    q = ti.Vector([p[0] * scale[0], p[1] * scale[1]])
    s = [_screen(c0, scale), _screen(c1, scale), _screen(c2, scale)]
    d2 = 0.0
    pos = 0
    neg = 0
    for k in ti.static(range(3)):
        a, e = s[k], s[(k + 1) % 3] - s[k]
        ee = e.dot(e)
        t = (q - a).dot(e) / ti.select(ee > 0.0, ee, 1.0)
        t = ti.select(t < 0.0, 0.0, ti.select(t > 1.0, 1.0, t))
        r = q - a - t * e
        dk = r.dot(r)
        if ti.static(k == 0):
            d2 = dk
        else:
            d2 = ti.select(dk < d2, dk, d2)
        cross = e[0] * (q[1] - a[1]) - e[1] * (q[0] - a[0])
        pos += ti.cast(cross > 0.0, ti.i32)
        neg += ti.cast(cross < 0.0, ti.i32)
    # homogeneous barycentrics a × b (interpolate.perspective_barycentrics without the
    # division by their sum: only the sign of the sum matters after clamping, so edge-on
    # faces stay finite)
    ha = ti.Vector([c0[0] - p[0] * c0[3], c1[0] - p[0] * c1[3], c2[0] - p[0] * c2[3]])
    hb = ti.Vector([c0[1] - p[1] * c0[3], c1[1] - p[1] * c1[3], c2[1] - p[1] * c2[3]])
    u = ha.cross(hb)
    u = ti.select(u[0] + u[1] + u[2] < 0.0, -u, u)
    u = ti.select(u > 0.0, u, 0.0)
    total = u[0] + u[1] + u[2]
    lam = ti.select(total > 0.0, u / ti.select(total > 0.0, total, 1.0), 1.0 / 3.0)
    return d2, pos == 3 or neg == 3, lam


@ti.data_oriented
class _Pairs:
    """(pixel, face) pairs, grouped by pixel, and their per-pair terms (with gradients)."""

    def __init__(self, capacity: int):
        real = backend.real()
        self.capacity = capacity
        self.n = ti.field(ti.i32, shape=())
        self.pixel = ti.field(ti.i32, shape=capacity)  # y · W + x
        self.face = ti.field(ti.i32, shape=capacity)
        self.log_q = ti.field(real, shape=capacity, **backend.diff())  # log(1 − D)
        self.weight = ti.field(real, shape=capacity, **backend.diff())  # D e^{(z − m)/γ}
        self.weighted_color = ti.Vector.field(3, real, shape=capacity, **backend.diff())


@ti.data_oriented
class SoftRasterizer:
    """Soft rasterization of up to ``max_faces`` faces on a ``width`` × ``height`` image.

    Parameters: ``sigma`` (σ, coverage sharpness, NDC units²), ``gamma`` (γ, depth
    softmax temperature), ``eps`` (ε, background depth), ``K`` (candidates per pixel),
    ``near``/``far`` (the camera's planes, for z normalisation), ``background`` (RGB),
    ``cutoff`` (coverage below which a face is not a candidate).

    Owns ``silhouette`` (H, W) and ``image`` (H, W, 3), with gradients; ``candidates``
    (H, W, K) int32 and ``count`` (H, W) int32 from the last ``select``.
    """

    def __init__(
        self,
        width: int,
        height: int,
        max_faces: int,
        sigma: float = 1e-5,
        gamma: float = 1e-4,
        eps: float = 1e-3,
        K: int = 50,
        near: float = 0.1,
        far: float = 100.0,
        background=(0.0, 0.0, 0.0),
        cutoff: float = 1e-4,
    ):
        check_resolution(width, height)
        check_depth_range(near, far)
        if int(K) != K or K < 1:
            raise UserError(f"K (candidate faces per pixel) must be a positive integer, got {K}")
        if int(max_faces) != max_faces or max_faces < 1:
            raise UserError(f"max_faces must be a positive integer, got {max_faces}")
        self.width, self.height, self.K = int(width), int(height), int(K)
        self.max_faces = int(max_faces)
        if self.width * self.height * self.K > MAX_PAIRS:
            raise UserError(
                f"{width}x{height} pixels x K={K} candidates is too large; "
                "lower K or the resolution"
            )
        self.near, self.far = float(near), float(far)
        backend.ensure_init()
        real = backend.real()
        W, H, K, F = self.width, self.height, self.K, self.max_faces
        m = min(W, H)
        self.scale = (W / m, H / m)  # NDC → isotropic screen units
        self.tiles_x, self.tiles_y = (W + TILE - 1) // TILE, (H + TILE - 1) // TILE
        shape = (H, W)
        self.silhouette = ti.field(real, shape=shape, **backend.diff())
        self.image = ti.Vector.field(3, real, shape=shape, **backend.diff())
        self.denominator = ti.field(real, shape=shape)  # Σ_j D e^{(z − m)/γ} + e^{(ε − m)/γ}
        self.zmax = ti.field(real, shape=shape)  # softmax shift m = max(ε, z_ij) at select
        self.candidates = ti.field(ti.i32, shape=(H, W, K))
        self.candidate_depth = ti.field(real, shape=(H, W, K))
        self.count = ti.field(ti.i32, shape=shape)  # candidates kept (≤ K)
        self.found = ti.field(ti.i32, shape=shape)  # faces within the cutoff distance
        self.offset = ti.field(ti.i32, shape=shape)
        self.stats = ti.field(ti.i32, shape=2)  # number of pairs, truncated pixels
        self._pairs = None  # grows with the number of pairs
        self.face_box = ti.Vector.field(4, ti.i32, shape=F)  # pixel x0, y0, x1, y1 (inclusive)
        self.tile_start = ti.field(ti.i32, shape=self.tiles_x * self.tiles_y + 1)
        self.tile_fill = ti.field(ti.i32, shape=self.tiles_x * self.tiles_y)
        # 1/σ, 1/γ, ε, r² (isotropic NDC units), r (pixels); r = cutoff distance
        self.params = ti.field(real, shape=5)
        self.background = ti.Vector.field(3, real, shape=())
        self.sigma, self.gamma, self.eps, self.cutoff = 1.0, 1.0, 0.0, 1e-4
        self.set(sigma=sigma, gamma=gamma, eps=eps, cutoff=cutoff, background=background)
        self._tile_faces = None
        self._tile_capacity = 0
        self.num_pairs = 0
        self.truncated = 0

    @classmethod
    def for_camera(cls, camera, max_faces: int, **kwargs) -> "SoftRasterizer":
        """A rasterizer with the camera's resolution and near/far planes."""
        return cls(
            camera.width, camera.height, max_faces, near=camera.near, far=camera.far, **kwargs
        )

    def set(self, sigma=None, gamma=None, eps=None, cutoff=None, background=None) -> None:
        """Change σ, γ, ε, the cutoff or the background (call ``select`` after σ/cutoff)."""
        for name, value in (("sigma", sigma), ("gamma", gamma)):
            if value is not None:
                if not (math.isfinite(value) and value > 0):
                    raise UserError(f"{name} must be a positive number, got {value}")
                setattr(self, name, float(value))
        if eps is not None:
            if not math.isfinite(eps):
                raise UserError(f"eps must be a finite number, got {eps}")
            self.eps = float(eps)
        if cutoff is not None:
            if not (0.0 < cutoff < 0.5):
                raise UserError(f"cutoff must be in (0, 0.5), got {cutoff}")
            self.cutoff = float(cutoff)
        if background is not None:
            bg = np.asarray(background, dtype=np.float64)
            if bg.shape != (3,) or not np.all(np.isfinite(bg)):
                raise UserError(f"background must be a finite RGB colour, got {background}")
            self.background[None] = bg
        r = self.radius
        p = (
            1.0 / self.sigma,
            1.0 / self.gamma,
            self.eps,
            r * r,
            r * min(self.width, self.height) / 2,
        )
        self.params.from_numpy(np.array(p, dtype=backend.np_real()))

    @property
    def radius(self) -> float:
        """Distance (isotropic NDC units) beyond which D_ij < cutoff outside a face."""
        return math.sqrt(self.sigma * math.log(1.0 / self.cutoff - 1.0))

    # ------------------------------------------------------------ selection
    @ti.kernel
    def _setup_faces(self, clip: ti.template(), faces: ti.template(), n_faces: ti.i32):
        W, H = self.width, self.height
        r = self.params[4]
        for f in range(n_faces):
            idx = faces[f]
            box = ti.Vector([0, 0, -1, -1])
            ok = True
            beyond = 0
            lo = ti.Vector([math.inf, math.inf])
            hi = -lo
            for k in ti.static(range(3)):
                c = clip[idx[k]]
                ok = ok and c[3] > 0.0 and c[2] >= -c[3]
                beyond += ti.cast(c[2] > c[3], ti.i32)
                if c[3] > 0.0:
                    q = ti.Vector([(c[0] / c[3] * 0.5 + 0.5) * W, (0.5 - c[1] / c[3] * 0.5) * H])
                    lo, hi = ti.min(lo, q), ti.max(hi, q)
            if ok and beyond < 3:
                # pixels whose centre x + 0.5 lies in [lo − r, hi + r]
                a = ti.ceil(ti.max(lo - r - 0.5, -1.0))
                b = ti.floor(ti.min(hi + r - 0.5, ti.Vector([W, H])))
                box = ti.Vector(
                    [
                        ti.max(ti.cast(a[0], ti.i32), 0),
                        ti.max(ti.cast(a[1], ti.i32), 0),
                        ti.min(ti.cast(b[0], ti.i32), W - 1),
                        ti.min(ti.cast(b[1], ti.i32), H - 1),
                    ]
                )
            self.face_box[f] = box

    @ti.kernel
    def _bin_count(self, n_faces: ti.i32) -> ti.i32:
        n_tiles = self.tiles_x * self.tiles_y
        for t in self.tile_start:
            self.tile_start[t] = 0
        ti.loop_config(serialize=True)
        for f in range(n_faces):
            b = self.face_box[f]
            if b[0] <= b[2] and b[1] <= b[3]:
                for ty in range(b[1] // TILE, b[3] // TILE + 1):
                    for tx in range(b[0] // TILE, b[2] // TILE + 1):
                        self.tile_start[ty * self.tiles_x + tx + 1] += 1
        ti.loop_config(serialize=True)
        for t in range(n_tiles):
            self.tile_start[t + 1] += self.tile_start[t]
        return self.tile_start[n_tiles]

    @ti.kernel
    def _bin_fill(self, n_faces: ti.i32, out: ti.types.ndarray(dtype=ti.i32, ndim=1)):
        for t in self.tile_fill:
            self.tile_fill[t] = self.tile_start[t]
        ti.loop_config(serialize=True)  # faces stay in ascending order in every tile
        for f in range(n_faces):
            b = self.face_box[f]
            if b[0] <= b[2] and b[1] <= b[3]:
                for ty in range(b[1] // TILE, b[3] // TILE + 1):
                    for tx in range(b[0] // TILE, b[2] // TILE + 1):
                        t = ty * self.tiles_x + tx
                        out[self.tile_fill[t]] = f
                        self.tile_fill[t] += 1

    @ti.kernel
    def _select(
        self,
        clip: ti.template(),
        faces: ti.template(),
        tile_faces: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ):
        K = self.K
        r2 = self.params[3]
        for y, x in self.count:
            t = (y // TILE) * self.tiles_x + x // TILE
            p = pixel_ndc(y, x, self.width, self.height)
            n = 0
            found = 0
            for j in range(self.tile_start[t], self.tile_start[t + 1]):
                f = tile_faces[j]
                b = self.face_box[f]
                if b[0] <= x and x <= b[2] and b[1] <= y and y <= b[3]:
                    idx = faces[f]
                    c0, c1, c2 = clip[idx[0]], clip[idx[1]], clip[idx[2]]
                    d2, inside, lam = face_geometry(c0, c1, c2, p, ti.Vector(self.scale))
                    if inside or d2 <= r2:
                        found += 1
                        z = lam[0] * c0[3] + lam[1] * c1[3] + lam[2] * c2[3]
                        if n < K:
                            self.candidates[y, x, n] = f
                            self.candidate_depth[y, x, n] = z
                            n += 1
                        else:  # replace the farthest (ties: the higher face id)
                            worst = 0
                            for k in range(1, K):
                                zk, zw = (
                                    self.candidate_depth[y, x, k],
                                    self.candidate_depth[y, x, worst],
                                )
                                if zk > zw or (
                                    zk == zw
                                    and self.candidates[y, x, k] > self.candidates[y, x, worst]
                                ):
                                    worst = k
                            if z < self.candidate_depth[y, x, worst]:
                                self.candidates[y, x, worst] = f
                                self.candidate_depth[y, x, worst] = z
            for k in range(n, K):
                self.candidates[y, x, k] = -1
            self.count[y, x] = n
            self.found[y, x] = found
            m = self.params[2]
            for k in range(n):
                zn = (self.far - self.candidate_depth[y, x, k]) / (self.far - self.near)
                m = ti.max(m, zn)
            self.zmax[y, x] = m

    @ti.kernel
    def _scan_pixels(self):
        self.stats[0] = 0
        self.stats[1] = 0
        ti.loop_config(serialize=True)
        for i in range(self.width * self.height):
            y, x = i // self.width, i % self.width
            self.offset[y, x] = self.stats[0]
            self.stats[0] += self.count[y, x]
            self.stats[1] += ti.cast(self.found[y, x] > self.count[y, x], ti.i32)

    @ti.kernel
    def _compact(self, pairs: ti.template()):
        pairs.n[None] = self.stats[0]
        for y, x in self.count:
            o = self.offset[y, x]
            for k in range(self.count[y, x]):
                pairs.pixel[o + k] = y * self.width + x
                pairs.face[o + k] = self.candidates[y, x, k]

    def select(self, clip, faces, n_faces: int) -> int:
        """Candidate faces per pixel (not differentiable). ``clip`` (V, 4) clip coordinates,
        ``faces`` (F, 3) int32; returns the number of (pixel, face) pairs. Sets
        ``truncated``: pixels where more than K faces were within reach (the farthest
        were dropped — raise K if that matters)."""
        if not 0 <= n_faces <= self.max_faces:
            raise UserError(
                f"{n_faces} faces exceed this soft rasterizer's {self.max_faces}; "
                "build it with a larger max_faces"
            )
        self._setup_faces(clip, faces, n_faces)
        total = self._bin_count(n_faces)
        if total > self._tile_capacity:  # grow, never drop faces
            self._tile_capacity = max(1 << max(total - 1, 1).bit_length(), 1024)
            self._tile_faces = ti.ndarray(ti.i32, shape=self._tile_capacity)
        if total:
            self._bin_fill(n_faces, self._tile_faces)
            self._select(clip, faces, self._tile_faces)
        else:
            self.count.fill(0)
            self.found.fill(0)
            self.candidates.fill(-1)
        self._scan_pixels()
        stats = self.stats.to_numpy()
        self.num_pairs, self.truncated = int(stats[0]), int(stats[1])
        if self._pairs is None or self.num_pairs > self._pairs.capacity:
            self._pairs = _Pairs(max(1 << max(self.num_pairs - 1, 1).bit_length(), 1024))
        self._compact(self._pairs)
        return self.num_pairs

    # ------------------------------------------------------------ differentiable
    @ti.kernel
    def _pair_terms(
        self, pairs: ti.template(), clip: ti.template(), faces: ti.template(), colors: ti.template()
    ):
        for p in range(pairs.n[None]):
            i = pairs.pixel[p]
            y, x = i // self.width, i % self.width
            idx = faces[pairs.face[p]]
            c0, c1, c2 = clip[idx[0]], clip[idx[1]], clip[idx[2]]
            p_ndc = pixel_ndc(y, x, self.width, self.height)
            d2, inside, lam = face_geometry(c0, c1, c2, p_ndc, ti.Vector(self.scale))
            zn = (self.far - (lam[0] * c0[3] + lam[1] * c1[3] + lam[2] * c2[3])) / (
                self.far - self.near
            )
            s = ti.select(inside, d2, -d2) * self.params[0]
            e = ti.exp(-ti.abs(s))
            coverage = ti.select(s >= 0.0, 1.0, e) / (1.0 + e)  # stable sigmoid(s)
            # log(1 − sigmoid(s)) = −softplus(s), stable
            pairs.log_q[p] = -(ti.select(s > 0.0, s, 0.0) + ti.log(1.0 + e))
            # shifted softmax weight; the clamp only acts when the geometry moved far since
            # select (then the shift is stale): it keeps the sums finite
            a = (zn - self.zmax[y, x]) * self.params[1]
            w = coverage * ti.exp(ti.select(a > EXP_LIMIT, EXP_LIMIT, a))
            color = lam[0] * colors[idx[0]] + lam[1] * colors[idx[1]] + lam[2] * colors[idx[2]]
            pairs.weight[p] = w
            pairs.weighted_color[p] = w * color

    @ti.kernel
    def _reduce(self, pairs: ti.template()):
        for y, x in self.silhouette:
            o = self.offset[y, x]
            log_t = 0.0
            w = ti.exp((self.params[2] - self.zmax[y, x]) * self.params[1])  # background
            c = w * self.background[None]
            for k in range(o, o + self.count[y, x]):
                log_t += pairs.log_q[k]
                w += pairs.weight[k]
                c += pairs.weighted_color[k]
            self.silhouette[y, x] = 1.0 - ti.exp(log_t)
            self.image[y, x] = c / w
            self.denominator[y, x] = w

    @ti.kernel
    def _reduce_backward(self, pairs: ti.template()):
        for y, x in self.silhouette:
            w = self.denominator[y, x]
            g_log_t = -self.silhouette.grad[y, x] * (1.0 - self.silhouette[y, x])
            g_c = self.image.grad[y, x] / w
            g_w = -g_c.dot(self.image[y, x])
            o = self.offset[y, x]
            for k in range(o, o + self.count[y, x]):
                pairs.log_q.grad[k] = g_log_t
                pairs.weight.grad[k] = g_w
                pairs.weighted_color.grad[k] = g_c

    @ti.ad.grad_replaced
    def _blend(self, pairs):
        """Per-pixel sums over the pixel's pairs (contiguous) → silhouette and image."""
        self._reduce(pairs)

    @ti.ad.grad_for(_blend)
    def _blend_grad(self, pairs):
        self._reduce_backward(pairs)

    def forward(self, clip, faces, vertex_colors) -> None:
        """``silhouette`` and ``image`` for the candidates of the last ``select``;
        differentiable in ``clip`` (V, 4) and ``vertex_colors`` (V, 3)."""
        if self._pairs is None:
            raise UserError("call select() before forward(): it picks the candidate faces")
        self._pair_terms(self._pairs, clip, faces, vertex_colors)
        self._blend(self._pairs)

    def zero_grad(self) -> None:
        self.silhouette.grad.fill(0)
        self.image.grad.fill(0)


@ti.data_oriented
class VertexShader:
    """Per-vertex shading for the soft rasterizer: owns ``colors`` (V, 3), the radiance
    leaving each vertex towards the eye (same models and lights as the per-pixel
    ``Shader``: two-sided, albedo = material base colour × vertex colour). Differentiable."""

    def __init__(self, max_vertices: int):
        self.colors = ti.Vector.field(3, backend.real(), shape=max_vertices, **backend.diff())

    @ti.kernel
    def _shade(
        self,
        model: ti.template(),
        world: ti.template(),
        normal: ti.template(),
        albedo: ti.template(),
        eye: ti.template(),
        lights: ti.template(),
        mat: ti.template(),
        n: ti.i32,
    ):
        for i in range(n):
            p = world[i]
            v = (eye[None] - p).normalized(1e-12)
            nrm = normal[i].normalized(1e-12)
            nrm = ti.select(nrm.dot(v) < 0.0, -nrm, nrm)
            a = mat.base_color[None] * albedo[i]
            out = a
            if ti.static(model == MODELS["normals"]):
                out = nrm * 0.5 + 0.5
            elif ti.static(model != MODELS["unlit"]):
                out = surface_radiance(model, a, nrm, v, p, lights, mat)
            self.colors[i] = out

    def forward(self, model: str, vertex, mesh, lights, material) -> None:
        """Shade ``mesh.num_vertices`` vertices of a VertexStage ``vertex`` (world positions
        and normals) with ``mesh.colors`` as albedo; ``model`` as in ``shading.MODELS``."""
        if model not in MODELS:
            raise UserError(f"unknown shading {model!r}; choose one of {', '.join(MODELS)}")
        self._shade(
            MODELS[model],
            vertex.world,
            vertex.normal,
            mesh.colors,
            vertex.eye,
            lights,
            material,
            mesh.num_vertices,
        )

    def zero_grad(self) -> None:
        self.colors.grad.fill(0)
