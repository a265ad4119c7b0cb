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

Two phases, both O(pairs + faces) with one thread per tile, pixel or face and no
per-pair atomics (a pair: a pixel and one of its candidate faces).

* ``select`` (not differentiable; call it whenever the geometry changed) bins faces into
  8×8-pixel tiles by their screen box dilated by the distance where D < ``cutoff``
  (r = sqrt(σ ln(1/cutoff − 1))); a (face, tile) pair is a *slot*, numbered face by face.
  One thread per tile then keeps, for each pixel, the ``K`` faces nearest in depth among
  those inside or within r (depths are only computed for pixels with more than K):
  ``candidates`` (H, W, K) int32 (entries past ``count`` are unused), and for each slot a
  64-bit mask of the tile's pixels that kept its face.
* ``forward`` (differentiable in the clip coordinates and vertex colours) first computes
  per-face records, a Taichi-differentiated kernel: screen vertices, each edge's line
  (signed distance a q_x + b q_y + c) and projection, and the homogeneous barycentrics
  as planes in NDC, u_v = A_v + B_v p_x + C_v p_y (the p_x p_y terms of a × b cancel), so
  a pair costs a few multiply-adds per edge. Then one thread per tile goes face by face
  over the pixels that kept each face, with a hand-written backward
  (``ti.ad.grad_replaced``, so no exp sits in an AD inner loop, TAICHI_NOTES §6). It
  multiplies the 1 − D and sums the softmax weights shifted by m_i, the running maximum of
  ε and z_ij (online softmax; the blend does not depend on m, so it is a constant for the
  gradient, and γ = 1e-4 never overflows), and stores each pair's D, nearest boundary
  feature and signed distance (12 bytes in f32), numbered slot by slot. The backward pass
  is one thread per face over its slots' masks: it reads those records (recomputing only
  the barycentrics of pairs with a weight) and sums the adjoints of the face's records in
  registers (d² = l² for the nearest edge line, |q − s_v|² for a vertex).

Exact shortcuts, no approximation: a pair whose weight e^{(z − m)/γ} is exactly 0 for
every z in its face's depth range (e.g. the far side of a closed mesh) skips the
barycentrics and colour, and in the backward pass all work when the pixel's silhouette
has no gradient.

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

TILE = 8  # binning tile edge in pixels: a tile's 64 pixels are the bits of a u64
EXP_ZERO = {"f32": -110.0, "f64": -750.0}  # e^x rounds to exactly 0 below these
MAX_PAIRS = 1 << 30  # (pixel, candidate) slots H·W·K; more would not fit int32 indices


def _check_settings(sigma, gamma, eps, cutoff, background) -> None:
    """Raise :class:`UserError` for a bad σ, γ, ε, cutoff or background (None: unset)."""
    for name, value in (("sigma", sigma), ("gamma", gamma)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value}")
    if eps is not None and not math.isfinite(eps):
        raise UserError(f"eps must be a finite number, got {eps}")
    if cutoff is not None and not (0.0 < cutoff < 0.5):
        raise UserError(f"cutoff must be in (0, 0.5), got {cutoff}")
    if background is not None:
        bg = np.asarray(background, dtype=np.float64)
        if bg.shape != (3,) or not np.all(np.isfinite(bg)):
            raise UserError(f"background must be a finite RGB colour, got {background}")


def _capacity(n: int) -> int:
    """Buffer length for n items: a power of two, at least 1024 (grown, never shrunk)."""
    return max(1 << max(n - 1, 1).bit_length(), 1024)


@ti.data_oriented
class SoftRasterizer:
    """Soft rasterization of up to ``max_faces`` faces on a ``width`` × ``height`` image.

    Parameters: ``sigma`` (σ, coverage sharpness, NDC units²), ``gamma`` (γ, depth
    softmax temperature), ``eps`` (ε, background depth), ``K`` (candidates per pixel),
    ``near``/``far`` (the camera's planes, for z normalisation), ``background`` (RGB),
    ``cutoff`` (coverage below which a face is not a candidate).

    Owns ``silhouette`` (H, W) and ``image`` (H, W, 3), with gradients; ``candidates``
    (H, W, K) int32 (the first ``count`` per pixel) and ``count`` (H, W) int32 from the last
    ``select``.
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
        _check_settings(sigma, gamma, eps, cutoff, background)  # before allocating fields
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
        self.zmax = ti.field(real, shape=shape)  # shift m = max(ε, z_ij) of the last forward
        # per-pixel adjoints of the blend: ∂L/∂log Π(1 − D), ∂L/∂Σw, ∂L/∂Σ wC
        self.adjoint = ti.Vector.field(5, real, shape=shape)
        self.candidates = ti.field(ti.i32, shape=(H, W, K))
        self.candidate_depth = ti.field(real, shape=(H, W, K))
        self.count = ti.field(ti.i32, shape=shape)  # candidates kept (≤ K)
        self.overflow = ti.field(ti.i32, shape=())  # pixels with more than K within reach
        # per-face records (differentiable functions of the clip coordinates, but ``along``
        # and ``depth_range``); q: isotropic screen point, p: NDC point
        self.screen = ti.Matrix.field(3, 2, real, shape=F, **backend.diff())  # vertex v
        # edge k (s_k → s_k+1): a, b, c with a q_x + b q_y + c the signed distance from q
        # to the edge's line, positive on the face's inner side
        self.line = ti.Matrix.field(3, 3, real, shape=F, **backend.diff())
        # edge k: α, β, γ with t = α q_x + β q_y + γ the position of q's projection along
        # the edge (0 at s_k, 1 at s_k+1; −1 for a zero-length edge)
        self.along = ti.Matrix.field(3, 3, real, shape=F)
        # vertex v: A, B, C with u_v = A + B p_x + C p_y its homogeneous barycentric
        self.bary = ti.Matrix.field(3, 3, real, shape=F, **backend.diff())
        self.depth = ti.Vector.field(3, real, shape=F, **backend.diff())  # eye depth (clip w)
        self.depth_range = ti.Vector.field(2, real, shape=F)  # normalised depth lo, hi
        self.face_box = ti.Vector.field(4, ti.i32, shape=F)  # pixel x0, y0, x1, y1 (inclusive)
        self.slot_start = ti.field(ti.i32, shape=F + 1)  # face f's (face, tile) slots
        self.tile_start = ti.field(ti.i32, shape=self.tiles_x * self.tiles_y + 1)
        self.tile_fill = ti.field(ti.i32, shape=self.tiles_x * self.tiles_y)
        # 1/σ, 1/γ, ε, r² (isotropic NDC units), r (pixels); r = cutoff distance
        self.params = ti.field(real, shape=5)
        self.background = ti.Vector.field(3, real, shape=())
        self.sigma, self.gamma, self.eps, self.cutoff = 1.0, 1.0, 0.0, 1e-4
        self.set(sigma=sigma, gamma=gamma, eps=eps, cutoff=cutoff, background=background)
        # (tile slots, slot face, slot mask, slot's first pair) ndarrays, grown on demand
        self._slots = None
        # per pair, slot by slot in mask-bit order: D, the signed distance l to the nearest
        # edge line and a code (nearest feature + 8 · inside); forward writes, backward reads
        self._pairs = None
        self.tile_block = 16 if backend.current_arch() == "cpu" else 64  # tiles per task
        self._n_faces = None  # faces of the last select
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
        _check_settings(sigma, gamma, eps, cutoff, background)
        for name, value in (("sigma", sigma), ("gamma", gamma), ("eps", eps), ("cutoff", cutoff)):
            if value is not None:
                setattr(self, name, float(value))
        if background is not None:
            self.background[None] = np.asarray(background, dtype=np.float64)
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

    # ------------------------------------------------------------ face records
    @ti.kernel
    def _records(self, clip: ti.template(), faces: ti.template(), n_faces: ti.i32):
        """Per face: screen vertices, edge lines and projections, barycentric planes,
        depths (differentiable but ``along`` and ``depth_range``; a vertex with w ≤ 0 is
        divided by 1 instead: such faces are never drawn)."""
        for f in range(n_faces):
            sx, sy = ti.static(self.scale)
            idx = faces[f]
            c = [clip[idx[0]], clip[idx[1]], clip[idx[2]]]
            w = [ti.select(c[k][3] > 0.0, c[k][3], 1.0) for k in ti.static(range(3))]
            s = [ti.Vector([c[k][0] / w[k] * sx, c[k][1] / w[k] * sy]) for k in ti.static(range(3))]
            area = (s[1] - s[0]).cross(s[2] - s[0])
            orient = ti.select(area < 0.0, -1.0, 1.0)
            for k in ti.static(range(3)):
                i, j = ti.static((k + 1) % 3, (k + 2) % 3)
                self.screen[f][k, 0] = s[k][0]
                self.screen[f][k, 1] = s[k][1]
                e = s[i] - s[k]
                ee = e.dot(e)
                ok = ee > 0.0
                inv_len = orient / ti.sqrt(ti.select(ok, ee, 1.0))
                a, b = -e[1] * inv_len, e[0] * inv_len
                self.line[f][k, 0] = a
                self.line[f][k, 1] = b
                self.line[f][k, 2] = -(a * s[k][0] + b * s[k][1])
                inv_len2 = ti.select(ok, 1.0 / ti.select(ok, ee, 1.0), 0.0)
                self.along[f][k, 0] = e[0] * inv_len2
                self.along[f][k, 1] = e[1] * inv_len2
                self.along[f][k, 2] = ti.select(ok, -e.dot(s[k]) * inv_len2, -1.0)
                # u_k = a_i b_j − a_j b_i with a_v = x_v − p_x w_v, b_v = y_v − p_y w_v
                self.bary[f][k, 0] = c[i][0] * c[j][1] - c[j][0] * c[i][1]
                self.bary[f][k, 1] = c[j][3] * c[i][1] - c[i][3] * c[j][1]
                self.bary[f][k, 2] = c[j][0] * c[i][3] - c[i][0] * c[j][3]
                self.depth[f][k] = c[k][3]
            scale = 1.0 / (self.far - self.near)  # z interpolates w with convex weights
            w_lo = ti.min(c[0][3], c[1][3], c[2][3])
            w_hi = ti.max(c[0][3], c[1][3], c[2][3])
            self.depth_range[f] = ti.Vector([(self.far - w_hi) * scale, (self.far - w_lo) * scale])

    @ti.func
    def _outline(self, f):
        """Face f's records for ``_distance``: (screen, line, along)."""
        return self.screen[f], self.line[f], self.along[f]

    @ti.func
    def _distance(self, outline: ti.template(), q):
        """A face's ``_outline`` at isotropic screen point q: (d², inside, nearest, l) —
        squared distance to the face's boundary, whether q is strictly inside, which
        boundary feature is nearest (edge k: k; vertex v: 3 + v) and, for an edge, q's
        signed distance l to its line (d² = l²). Only select, no min/max."""
        s, ln, al = outline
        dx, dy = q[0] - s[0, 0], q[1] - s[0, 1]
        d2, nearest, l_near = dx * dx + dy * dy, 3, 0.0
        for v in ti.static(range(1, 3)):
            dx, dy = q[0] - s[v, 0], q[1] - s[v, 1]
            dv = dx * dx + dy * dy
            closer = dv < d2
            d2 = ti.select(closer, dv, d2)
            nearest = ti.select(closer, 3 + v, nearest)
        inside = True
        for k in ti.static(range(3)):
            lk = ln[k, 0] * q[0] + ln[k, 1] * q[1] + ln[k, 2]
            t = al[k, 0] * q[0] + al[k, 1] * q[1] + al[k, 2]
            inside = inside & (lk > 0.0)
            closer = (t >= 0.0) & (t <= 1.0) & (lk * lk < d2)
            d2 = ti.select(closer, lk * lk, d2)
            nearest = ti.select(closer, k, nearest)
            l_near = ti.select(closer, lk, l_near)
        return d2, inside, nearest, l_near

    @ti.func
    def _depth(self, f, y, x):
        """Eye-space depth of face f at pixel (y, x) (clamped barycentrics)."""
        p = pixel_ndc(y, x, self.width, self.height)
        return self._barycentrics(self.bary[f], p)[0].dot(self.depth[f])

    @ti.func
    def _vertex_colors(self, f, faces: ti.template(), colors: ti.template()):
        """Face f's vertex colours (rows)."""
        idx = faces[f]
        return ti.Matrix.rows([colors[idx[0]], colors[idx[1]], colors[idx[2]]])

    @ti.func
    def _iso(self, p):
        """NDC → isotropic screen units (the shorter image side spans 2)."""
        return ti.Vector([p[0] * self.scale[0], p[1] * self.scale[1]])

    @ti.func
    def _barycentrics(self, b: ti.template(), p):
        """A face's ``bary`` record b at NDC point p: (λ, u, Σu, sign) — perspective-correct
        barycentrics λ clamped to the face, from u = max(sign · u_plane, 0), sign making
        Σ u_plane ≥ 0 (λ = 1/3 when u = 0)."""
        u = ti.Vector([b[v, 0] + b[v, 1] * p[0] + b[v, 2] * p[1] for v in ti.static(range(3))])
        sign = ti.select(u.sum() < 0.0, -1.0, 1.0)
        u = ti.select(sign * u > 0.0, sign * u, 0.0)
        total = u.sum()
        lam = ti.select(total > 0.0, u * (1.0 / ti.select(total > 0.0, total, 1.0)), 1.0 / 3.0)
        return lam, u, total, sign

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

    @ti.func
    def _tile_box(self, t):
        """Pixel rows y0..y1 and columns x0..x1 (inclusive) of tile t."""
        y0, x0 = t // self.tiles_x * TILE, t % self.tiles_x * TILE
        return y0, x0, ti.min(y0 + TILE, self.height) - 1, ti.min(x0 + TILE, self.width) - 1

    @ti.func
    def _tiles(self, f):
        """Tile range (tx0, ty0, tx1, ty1) of face f's box; empty when tx0 > tx1."""
        b = self.face_box[f]
        t = ti.Vector([b[0] // TILE, b[1] // TILE, b[2] // TILE, b[3] // TILE])
        return ti.select(b[0] <= b[2] and b[1] <= b[3], t, ti.Vector([0, 0, -1, -1]))

    @ti.kernel
    def _bin_count(self, n_faces: ti.i32) -> ti.i32:
        """Slots: one per (face, tile under its box), numbered face by face."""
        for t in self.tile_start:
            self.tile_start[t] = 0
        self.slot_start[0] = 0
        ti.loop_config(serialize=True)
        for f in range(n_faces):
            b = self._tiles(f)
            self.slot_start[f + 1] = self.slot_start[f] + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            for ty in range(b[1], b[3] + 1):
                for tx in range(b[0], b[2] + 1):
                    self.tile_start[ty * self.tiles_x + tx + 1] += 1
        ti.loop_config(serialize=True)
        for t in range(self.tiles_x * self.tiles_y):
            self.tile_start[t + 1] += self.tile_start[t]
        return self.slot_start[n_faces]

    @ti.kernel
    def _bin_fill(
        self,
        n_faces: ti.i32,
        tile_slots: ti.types.ndarray(dtype=ti.i32, ndim=1),
        slot_face: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ):
        for t in self.tile_fill:
            self.tile_fill[t] = self.tile_start[t]
        ti.loop_config(serialize=True)  # slots stay in ascending face order in every tile
        for f in range(n_faces):
            b = self._tiles(f)
            j = self.slot_start[f]
            for ty in range(b[1], b[3] + 1):
                for tx in range(b[0], b[2] + 1):
                    t = ty * self.tiles_x + tx
                    tile_slots[self.tile_fill[t]] = j
                    slot_face[j] = f
                    self.tile_fill[t] += 1
                    j += 1

    @ti.kernel
    def _select(
        self,
        tile_slots: ti.types.ndarray(dtype=ti.i32, ndim=1),
        slot_face: ti.types.ndarray(dtype=ti.i32, ndim=1),
        mask: ti.types.ndarray(dtype=ti.u64, ndim=1),
    ):
        """One thread per tile (it owns its pixels and its slots' masks), face by face:
        each pixel keeps the K nearest faces within reach, as slots first, then face ids;
        bit (y % 8) · 8 + x % 8 of a slot's mask marks the pixels that kept it. Depths are
        only computed for pixels with more than K faces within reach."""
        K, W, H = self.K, self.width, self.height
        r2 = self.params[3]
        self.overflow[None] = 0
        ti.loop_config(block_dim=self.tile_block)
        for t in range(self.tiles_x * self.tiles_y):
            y0, x0, y1, x1 = self._tile_box(t)
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    self.count[y, x] = 0
            full = ti.u64(0)  # pixels that had more than K faces within reach
            for j in range(self.tile_start[t], self.tile_start[t + 1]):
                slot = tile_slots[j]
                f = slot_face[slot]
                b = self.face_box[f]
                outline = self._outline(f)
                bits = ti.u64(0)
                for y in range(ti.max(b[1], y0), ti.min(b[3], y1) + 1):
                    for x in range(ti.max(b[0], x0), ti.min(b[2], x1) + 1):
                        p = pixel_ndc(y, x, W, H)
                        d2, inside = self._distance(outline, self._iso(p))[:2]
                        if inside or d2 <= r2:
                            bit = ti.u64(1) << ti.u64((y - y0) * TILE + x - x0)
                            n = self.count[y, x]
                            if n < K:
                                self.candidates[y, x, n] = slot
                                self.count[y, x] = n + 1
                                bits |= bit
                            else:
                                if full & bit == ti.u64(0):  # first overflow: depths of the K
                                    full |= bit
                                    for k in range(K):
                                        g = slot_face[self.candidates[y, x, k]]
                                        self.candidate_depth[y, x, k] = self._depth(g, y, x)
                                # replace the farthest (ties: the higher slot = face id)
                                worst = 0
                                for k in range(1, K):
                                    zk = self.candidate_depth[y, x, k]
                                    zw = self.candidate_depth[y, x, worst]
                                    if zk > zw or (
                                        zk == zw
                                        and self.candidates[y, x, k] > self.candidates[y, x, worst]
                                    ):
                                        worst = k
                                z = self._depth(f, y, x)
                                if z < self.candidate_depth[y, x, worst]:
                                    evicted = self.candidates[y, x, worst]
                                    mask[evicted] = mask[evicted] & ~bit
                                    self.candidates[y, x, worst] = slot
                                    self.candidate_depth[y, x, worst] = z
                                    bits |= bit
                mask[slot] = bits
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    for k in range(self.count[y, x]):
                        self.candidates[y, x, k] = slot_face[self.candidates[y, x, k]]
            self.overflow[None] += ti.cast(ti.math.popcnt(full), ti.i32)

    @ti.kernel
    def _pair_offsets(
        self,
        n_slots: ti.i32,
        mask: ti.types.ndarray(dtype=ti.u64, ndim=1),
        slot_pairs: ti.types.ndarray(dtype=ti.i32, ndim=1),
    ) -> ti.types.vector(2, ti.i32):
        """Each slot's first pair: pairs are numbered slot by slot, in mask-bit order.
        Returns (pairs, truncated pixels)."""
        slot_pairs[0] = 0
        ti.loop_config(serialize=True)
        for j in range(n_slots):
            slot_pairs[j + 1] = slot_pairs[j] + ti.cast(ti.math.popcnt(mask[j]), ti.i32)
        return ti.Vector([slot_pairs[n_slots], self.overflow[None]])

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
        self._records(clip, faces, n_faces)
        self._setup_faces(clip, faces, n_faces)
        total = self._bin_count(n_faces)
        if self._slots is None or total >= self._slots[0].shape[0]:  # grow, never drop faces
            n = _capacity(total + 1)
            self._slots = (
                ti.ndarray(ti.i32, shape=n),
                ti.ndarray(ti.i32, shape=n),
                ti.ndarray(ti.u64, shape=n),
                ti.ndarray(ti.i32, shape=n),
            )
        tile_slots, slot_face, mask, slot_pairs = self._slots
        self._bin_fill(n_faces, tile_slots, slot_face)
        self._select(tile_slots, slot_face, mask)
        stats = self._pair_offsets(total, mask, slot_pairs)
        self.num_pairs, self.truncated = int(stats[0]), int(stats[1])
        if self._pairs is None or self.num_pairs > self._pairs.shape[0]:
            n = _capacity(self.num_pairs)
            self._pairs = ti.ndarray(ti.types.vector(3, backend.real()), shape=n)
        self._n_faces = n_faces
        return self.num_pairs

    # ------------------------------------------------------------ differentiable
    @ti.func
    def _coverage(self, outline: ti.template(), q):
        """A face's ``_outline`` at isotropic screen point q: the 4 values of
        ``_distance``, then 1 − D and D (stable sigmoids of ±d²/σ)."""
        d2, inside, nearest, l_near = self._distance(outline, q)
        arg = ti.select(inside, d2, -d2) * self.params[0]
        e = ti.exp(-ti.abs(arg))
        inv = 1.0 / (1.0 + e)
        miss = ti.select(arg >= 0.0, e, 1.0) * inv
        return d2, inside, nearest, l_near, miss, ti.select(arg >= 0.0, 1.0, e) * inv

    @ti.func
    def _shading(self, b: ti.template(), z: ti.template(), c: ti.template(), p):
        """A face's ``bary`` and ``depth`` records b, z and vertex colours ``c`` (rows) at
        NDC point p: the 4 values of ``_barycentrics``, the normalised depth
        (far − z)/(far − near) and the colour."""
        lam, u, total, sign = self._barycentrics(b, p)
        zn = (self.far - lam.dot(z)) * (1.0 / (self.far - self.near))
        color = lam[0] * c[0, :] + lam[1] * c[1, :] + lam[2] * c[2, :]
        return lam, u, total, sign, zn, color

    @ti.func
    def _weightless(self, zn_hi, m):
        """Whether e^{(z − m)/γ} is exactly 0 for every normalised depth z ≤ zn_hi."""
        return (zn_hi - m) * self.params[1] < ti.static(EXP_ZERO[backend.precision()])

    @ti.func
    def _next_pixel(self, bits):
        """The lowest set bit of a non-zero tile mask: (bits without it, row, column in
        the tile)."""
        low = bits & (~bits + ti.u64(1))
        bit = ti.cast(63 - ti.math.clz(low), ti.i32)
        return bits ^ low, bit // TILE, bit % TILE

    @ti.kernel
    def _blend_forward(
        self,
        faces: ti.template(),
        colors: ti.template(),
        tile_slots: ti.types.ndarray(dtype=ti.i32, ndim=1),
        slot_face: ti.types.ndarray(dtype=ti.i32, ndim=1),
        mask: ti.types.ndarray(dtype=ti.u64, ndim=1),
        slot_pairs: ti.types.ndarray(dtype=ti.i32, ndim=1),
        pairs: ti.types.ndarray(ndim=1),
    ):
        """One thread per tile, face by face over the pixels that kept the face (its slot's
        mask). While summing, ``silhouette`` holds Π (1 − D), ``image`` Σ w C, and
        ``denominator`` Σ w; each pair's (D, l, code) is stored for the backward pass."""
        W, H = self.width, self.height
        ti.loop_config(block_dim=self.tile_block)
        for t in range(self.tiles_x * self.tiles_y):
            y0, x0, y1, x1 = self._tile_box(t)
            # The weights are summed shifted by m, the running maximum of ε and z (online
            # softmax: rescaled whenever m grows), started at a lower bound of the final m
            # so that pairs whose weight e^{(z − m)/γ} is exactly 0 skip the shading.
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    self.zmax[y, x] = self.params[2]
            for j in range(self.tile_start[t], self.tile_start[t + 1]):
                slot = tile_slots[j]
                lo = self.depth_range[slot_face[slot]][0]
                bits = mask[slot]
                while bits != ti.u64(0):
                    bits, dy, dx = self._next_pixel(bits)
                    self.zmax[y0 + dy, x0 + dx] = ti.max(self.zmax[y0 + dy, x0 + dx], lo)
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    w = ti.exp((self.params[2] - self.zmax[y, x]) * self.params[1])
                    self.silhouette[y, x] = 1.0  # Π (1 − D): 0 only where the silhouette is 1
                    self.image[y, x] = w * self.background[None]
                    self.denominator[y, x] = w
            for j in range(self.tile_start[t], self.tile_start[t + 1]):
                slot = tile_slots[j]
                f = slot_face[slot]
                outline, b, z = self._outline(f), self.bary[f], self.depth[f]
                cols = self._vertex_colors(f, faces, colors)
                zn_hi = self.depth_range[f][1]
                i = slot_pairs[slot]
                bits = mask[slot]
                while bits != ti.u64(0):
                    bits, dy, dx = self._next_pixel(bits)
                    y, x = y0 + dy, x0 + dx
                    p = pixel_ndc(y, x, W, H)
                    _, inside, nearest, l_near, miss, cov = self._coverage(outline, self._iso(p))
                    self.silhouette[y, x] *= miss
                    m = self.zmax[y, x]
                    if not self._weightless(zn_hi, m):
                        zn, color = self._shading(b, z, cols, p)[4:]
                        if zn > m:
                            rescale = ti.exp((m - zn) * self.params[1])
                            self.denominator[y, x] *= rescale
                            self.image[y, x] *= rescale
                            m = zn
                            self.zmax[y, x] = m
                        wk = cov * ti.exp((zn - m) * self.params[1])
                        self.denominator[y, x] += wk
                        self.image[y, x] += wk * color
                    pairs[i] = ti.Vector([cov, l_near, nearest + 8 * ti.cast(inside, ti.i32)])
                    i += 1
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    self.silhouette[y, x] = 1.0 - self.silhouette[y, x]
                    self.image[y, x] /= self.denominator[y, x]

    @ti.kernel
    def _pixel_adjoints(self):
        for y, x in self.silhouette:
            g_c = self.image.grad[y, x] / self.denominator[y, x]
            g_log_t = -self.silhouette.grad[y, x] * (1.0 - self.silhouette[y, x])
            self.adjoint[y, x] = ti.Vector(
                [g_log_t, -g_c.dot(self.image[y, x]), g_c[0], g_c[1], g_c[2]]
            )

    @ti.func
    def _pair_adjoint(self, rec: ti.template(), zn_hi, y, x, pair, g: ti.template()):
        """Adds the adjoints of the pair of pixel (y, x) and a face — records rec =
        (outline, bary, depth, vertex colours), depth bound zn_hi, the pair's stored
        (D, l, code) ``pair`` — to the face's record adjoints g = (screen, line, bary,
        depth, vertex colours). A pair with a weight of exactly 0 and no silhouette
        gradient adds nothing."""
        outline, b, z, cols = rec
        adj = self.adjoint[y, x]
        m = self.zmax[y, x]
        shaded = not self._weightless(zn_hi, m)
        if shaded or adj[0] != 0.0:
            p = pixel_ndc(y, x, self.width, self.height)
            q = self._iso(p)
            cov = pair[0]
            g_arg = -cov * adj[0]  # ∂L/∂(±d²/σ)
            if shaded:
                lam, u, total, sign, zn, color = self._shading(b, z, cols, p)
                factor = ti.exp((zn - m) * self.params[1])
                w = cov * factor
                g_c = ti.Vector([adj[2], adj[3], adj[4]])
                g_w = adj[1] + g_c.dot(color)  # ∂L/∂w_ij
                g_color = w * g_c
                g_arg += g_w * factor * cov * (1.0 - cov)
                g_depth = -g_w * w * self.params[1] / (self.far - self.near)
                g_lam = g_depth * z + cols @ g_color
                g_u = (g_lam - g_lam.dot(lam)) / ti.select(total > 0.0, total, 1.0)
                g_u = ti.select(u > 0.0, g_u, 0.0) * sign
                for v in ti.static(range(3)):  # u_v = A + B p_x + C p_y
                    g[2][v, 0] += g_u[v]
                    g[2][v, 1] += g_u[v] * p[0]
                    g[2][v, 2] += g_u[v] * p[1]
                    g[3][v] += g_depth * lam[v]
                    for ch in ti.static(range(3)):
                        g[4][v, ch] += lam[v] * g_color[ch]
            code = ti.cast(pair[2], ti.i32)
            g_d2 = ti.select(code >= 8, g_arg, -g_arg) * self.params[0]
            nearest = code & 7
            # nearest edge k: d² = (a q_x + b q_y + c)²; nearest vertex v: d² = |q − s_v|²
            for k in ti.static(range(3)):
                gk = ti.select(nearest == k, 2.0 * g_d2 * pair[1], 0.0)
                g[1][k, 0] += gk * q[0]
                g[1][k, 1] += gk * q[1]
                g[1][k, 2] += gk
            s = outline[0]
            for v in ti.static(range(3)):
                gv = ti.select(nearest == 3 + v, 2.0 * g_d2, 0.0)
                g[0][v, 0] -= gv * (q[0] - s[v, 0])
                g[0][v, 1] -= gv * (q[1] - s[v, 1])

    @ti.kernel
    def _face_adjoints(
        self,
        faces: ti.template(),
        colors: ti.template(),
        n_faces: ti.i32,
        mask: ti.types.ndarray(dtype=ti.u64, ndim=1),
        slot_pairs: ti.types.ndarray(dtype=ti.i32, ndim=1),
        pairs: ti.types.ndarray(ndim=1),
    ):
        """One thread per face over the pixels that kept it (its slots' masks): sums the
        pair adjoints into the face records' gradients (no atomics but the final colour
        scatter)."""
        ti.loop_config(block_dim=self.tile_block * 4)
        for f in range(n_faces):
            g = (
                ti.Matrix.zero(float, 3, 2),  # screen
                ti.Matrix.zero(float, 3, 3),  # line
                ti.Matrix.zero(float, 3, 3),  # bary
                ti.Vector.zero(float, 3),  # depth
                ti.Matrix.zero(float, 3, 3),  # row v: vertex v's colour
            )
            rec = (
                self._outline(f),
                self.bary[f],
                self.depth[f],
                self._vertex_colors(f, faces, colors),
            )
            zn_hi = self.depth_range[f][1]
            tb = self._tiles(f)
            j = self.slot_start[f]
            for ty in range(tb[1], tb[3] + 1):
                for tx in range(tb[0], tb[2] + 1):
                    bits = mask[j]
                    i = slot_pairs[j]
                    j += 1
                    while bits != ti.u64(0):
                        bits, dy, dx = self._next_pixel(bits)
                        y, x = ty * TILE + dy, tx * TILE + dx
                        self._pair_adjoint(rec, zn_hi, y, x, pairs[i], g)
                        i += 1
            self.screen.grad[f] = g[0]
            self.line.grad[f] = g[1]
            self.bary.grad[f] = g[2]
            self.depth.grad[f] = g[3]
            for v in ti.static(range(3)):
                colors.grad[faces[f][v]] += ti.Vector([g[4][v, ch] for ch in ti.static(range(3))])

    @ti.ad.grad_replaced
    def _blend(self, faces, colors):
        """Per-pixel sums over the pixel's candidates → silhouette and image."""
        self._blend_forward(faces, colors, *self._slots, self._pairs)

    @ti.ad.grad_for(_blend)
    def _blend_grad(self, faces, colors):
        self._pixel_adjoints()
        self._face_adjoints(faces, colors, self._n_faces, *self._slots[2:], self._pairs)

    def forward(self, clip, faces, vertex_colors) -> None:
        """``silhouette`` and ``image`` for the candidates of the last ``select``;
        differentiable in ``clip`` (V, 4) and ``vertex_colors`` (V, 3)."""
        if self._n_faces is None:
            raise UserError("call select() before forward(): it picks the candidate faces")
        self._records(clip, faces, self._n_faces)
        self._blend(faces, vertex_colors)

    def zero_grad(self) -> None:
        backend.zero_grads(self.silhouette, self.image)


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
        stop: ti.template(),
    ):
        for i in range(n):
            for field in ti.static(stop):
                ti.stop_grad(field)
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

    def forward(self, model: str, vertex, mesh, lights, material, stop=()) -> None:
        """Shade ``mesh.num_vertices`` vertices of a VertexStage ``vertex`` (world positions
        and normals) with ``mesh.colors`` as albedo; ``model`` as in ``shading.MODELS``;
        ``stop``: input fields that get no gradient."""
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
            stop,
        )

    def zero_grad(self) -> None:
        self.colors.grad.fill(0)
