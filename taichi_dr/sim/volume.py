"""Differentiable emission–absorption volume rendering of a density grid (ray marching).

The grid of ``shape = (nx, ny, nz)`` cells fills the axis-aligned box ``[lo, hi]`` of model
space (cell ``I`` has its centre at ``lo + (I + 0.5) h``, ``h = (hi − lo) / shape``; the camera's
``model`` matrix places the box in the world). Density between cell centres is trilinear,
clamped to the outermost centres inside the box and zero outside it.

Each pixel's ray (through the pixel centre, DESIGN §2) is cut to the box and marched in a
fixed number ``steps`` of equal segments of length ``Δs`` with midpoint samples ``ρ_i``:

    τ_i = σ Δs Σ_{j<i} ρ_j,   T_i = exp(−τ_i),   E = Σ_i T_i ρ_i Δs,
    image = ε E + background · T_N,

with absorption ``σ`` (per unit density and length) and emission colour ``ε`` (RGB per unit
density and length): Max's (1995) emission–absorption model, left-Riemann quadrature.

Gradients reach the density field, ``absorption`` and ``emission``. Sampling (``samples``)
is differentiated by Taichi; the march has a hand-written adjoint (Taichi 1.7.4's reverse
mode gets ``exp`` in a runtime inner loop wrong and needs an AD stack per step):

    ∂E/∂ρ_k = Δs (T_k − σ Σ_{i>k} T_i ρ_i Δs),   ∂T_N/∂ρ_k = −σ Δs T_N,
    ∂E/∂σ = −Σ_i (τ_i / σ) T_i ρ_i Δs,          ∂T_N/∂σ = −(τ_N / σ) T_N.
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .grid import clamped_cell, corner_weight

MAX_SAMPLES = 1 << 28


def default_box(shape) -> tuple[np.ndarray, np.ndarray]:
    """Box with cubic cells, centred at the origin, whose longest side spans [−1, 1]."""
    n = np.asarray(shape, dtype=np.float64)
    half = n / n.max()
    return -half, half


def camera_rays(camera, lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel (H, W): model-space origin (3), unit direction (3), the distance where the
    ray enters the box and where it leaves (equal when it misses). Float64."""
    W, H = camera.width, camera.height
    xs = (np.arange(W) + 0.5) / W * 2 - 1
    ys = 1 - (np.arange(H) + 0.5) / H * 2
    nx, ny = np.meshgrid(xs, ys)  # (H, W), row 0 at the top
    inv = np.linalg.inv(camera.mvp)

    def unproject(z):
        p = np.stack([nx, ny, np.full_like(nx, z), np.ones_like(nx)], axis=-1) @ inv.T
        return p[..., :3] / p[..., 3:]

    origin = unproject(-1.0)  # on the near plane
    d = unproject(1.0) - origin
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (np.asarray(lo) - origin) / d
        t2 = (np.asarray(hi) - origin) / d
    t1 = np.where(d == 0, np.where((origin >= lo) & (origin <= hi), -np.inf, np.inf), t1)
    t2 = np.where(d == 0, np.where((origin >= lo) & (origin <= hi), np.inf, -np.inf), t2)
    t_in = np.maximum(np.minimum(t1, t2).max(axis=-1), 0.0)
    t_out = np.maximum(t1, t2).min(axis=-1)
    t_out = np.maximum(t_out, t_in)
    return origin, d, t_in, t_out


@ti.data_oriented
class VolumeRenderer:
    """Renders a (nx, ny, nz) density field through one or more cameras of equal size.

    Owns ``image`` (views, H, W, 3; linear RGB, row 0 at the top), ``samples`` (views, H, W,
    steps), ``absorption`` (scalar σ) and ``emission`` (RGB ε), all with gradients; borrows
    the density field passed to :meth:`forward` / :meth:`backward` / :meth:`render`."""

    def __init__(
        self,
        shape,
        cameras,
        steps: int = 64,
        box=None,
        absorption: float = 1.0,
        emission=(1.0, 1.0, 1.0),
        background=(0.0, 0.0, 0.0),
    ):
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3 or min(self.shape) < 2:
            raise UserError(f"volume grid must have 3 axes of ≥ 2 cells, got {shape}")
        self.cameras = [cameras] if not isinstance(cameras, (list, tuple)) else list(cameras)
        if not self.cameras:
            raise UserError("the volume renderer needs at least one camera")
        W, H = self.cameras[0].width, self.cameras[0].height
        if any((c.width, c.height) != (W, H) for c in self.cameras):
            raise UserError("all cameras of a volume renderer must have the same resolution")
        if int(steps) != steps or steps < 1:
            raise UserError(f"ray-march steps must be a positive integer, got {steps}")
        V, self.steps = len(self.cameras), int(steps)
        if V * H * W * self.steps > MAX_SAMPLES:
            raise UserError(
                f"{V} views × {W}x{H} pixels × {steps} steps is too many samples for memory; "
                "lower the resolution, the views or the steps"
            )
        lo, hi = default_box(self.shape) if box is None else (np.asarray(b, float) for b in box)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(hi > lo):
            raise UserError(f"box must be two 3-vectors lo < hi, got {box!r}")
        self.lo, self.hi = lo, hi
        real = backend.real()
        self.image = ti.field(real, (V, H, W, 3), needs_grad=True)
        self.samples = ti.field(real, (V, H, W, self.steps), needs_grad=True)
        self.absorption = ti.field(real, (), needs_grad=True)
        self.emission = ti.field(real, 3, needs_grad=True)
        self.background = ti.field(real, 3)
        self._origin = ti.Vector.field(3, real, (V, H, W))
        self._dir = ti.Vector.field(3, real, (V, H, W))
        self._t0 = ti.field(real, (V, H, W))
        self._ds = ti.field(real, (V, H, W))
        self._lo_list = lo.tolist()
        self._inv_h_list = (np.asarray(self.shape) / (hi - lo)).tolist()
        self.set_params(absorption, emission, background)
        rays = [camera_rays(c, lo, hi) for c in self.cameras]
        npr = backend.np_real()
        self._origin.from_numpy(np.stack([r[0] for r in rays]).astype(npr))
        self._dir.from_numpy(np.stack([r[1] for r in rays]).astype(npr))
        self._t0.from_numpy(np.stack([r[2] for r in rays]).astype(npr))
        self._ds.from_numpy(np.stack([(r[3] - r[2]) / self.steps for r in rays]).astype(npr))

    def set_params(self, absorption=None, emission=None, background=None):
        """Absorption σ ≥ 0, emission and background RGB (≥ 0)."""
        if absorption is not None:
            if not (np.isfinite(absorption) and absorption >= 0):
                raise UserError(f"absorption must be a finite number ≥ 0, got {absorption}")
            self.absorption[None] = absorption
        for name, f, v in (
            ("emission", self.emission, emission),
            ("background", self.background, background),
        ):
            if v is not None:
                a = np.asarray(v, dtype=np.float64)
                if a.shape != (3,) or not np.all(np.isfinite(a)) or np.any(a < 0):
                    raise UserError(f"{name} must be 3 finite numbers ≥ 0, got {v!r}")
                f.from_numpy(a.astype(backend.np_real()))

    # ---- public -------------------------------------------------------------------------
    def forward(self, density):
        """Render ``density`` (a field of ``shape``) into ``image``."""
        self._check(density)
        self._sample(density)
        self._march()

    def backward(self, density):
        """Given ``image.grad``, accumulate into ``density.grad``, ``absorption.grad`` and
        ``emission.grad``; ``image.grad`` is consumed (zeroed), like the adjoint of any
        kernel that overwrites its output."""
        self.samples.grad.fill(0)
        self._march_adjoint()
        self.image.grad.fill(0)
        self._sample.grad(density)

    @ti.ad.grad_replaced
    def render(self, density):
        """:meth:`forward`, recorded by an enclosing ``ti.ad.Tape`` with :meth:`backward`."""
        self.forward(density)

    @ti.ad.grad_for(render)
    def _render_grad(self, density):
        self.backward(density)

    def zero_grad(self):
        for f in (self.image, self.samples, self.absorption, self.emission):
            f.grad.fill(0)

    def images(self) -> np.ndarray:
        """The rendered images as a (views, H, W, 3) NumPy array."""
        return self.image.to_numpy()

    def _check(self, density):
        if tuple(density.shape) != self.shape:
            raise UserError(f"density field has shape {density.shape}, expected {self.shape}")

    # ---- kernels ------------------------------------------------------------------------
    @ti.func
    def _lookup(self, density: ti.template(), p):
        """Trilinear density at model-space point ``p`` (clamped to the cell centres)."""
        lo, inv_h = ti.Vector(ti.static(self._lo_list)), ti.Vector(ti.static(self._inv_h_list))
        base, frac = _cell((p - lo) * inv_h - 0.5, ti.static(self.shape))
        result = 0.0
        for corner in ti.static(ti.grouped(ti.ndrange(2, 2, 2))):
            result += corner_weight(frac, corner, -1) * density[base + corner]
        return result

    @ti.kernel
    def _sample(self, density: ti.template()):
        for v, y, x, i in ti.ndrange(*self.samples.shape):
            t = self._t0[v, y, x] + (i + 0.5) * self._ds[v, y, x]
            self.samples[v, y, x, i] = self._lookup(
                density, self._origin[v, y, x] + t * self._dir[v, y, x]
            )

    @ti.kernel
    def _march(self):
        for v, y, x in self._ds:
            ds, sigma = self._ds[v, y, x], self.absorption[None]
            tau, e = 0.0, 0.0  # optical depth / σ, emission integral
            for i in range(self.steps):
                rho = self.samples[v, y, x, i]
                e += ti.exp(-sigma * tau) * rho * ds
                tau += rho * ds
            t_end = ti.exp(-sigma * tau)
            for c in ti.static(range(3)):
                self.image[v, y, x, c] = self.emission[c] * e + self.background[c] * t_end

    @ti.kernel
    def _march_adjoint(self):
        for v, y, x in self._ds:
            ds, sigma = self._ds[v, y, x], self.absorption[None]
            tau, e, e_tau = 0.0, 0.0, 0.0
            for i in range(self.steps):
                rho = self.samples[v, y, x, i]
                w = ti.exp(-sigma * tau) * rho * ds
                e += w
                e_tau += tau * w
                tau += rho * ds
            t_end = ti.exp(-sigma * tau)
            g_e, g_t = 0.0, 0.0
            for c in ti.static(range(3)):
                g = self.image.grad[v, y, x, c]
                g_e += g * self.emission[c]
                g_t += g * self.background[c]
                self.emission.grad[c] += g * e
            self.absorption.grad[None] += -g_e * e_tau - g_t * tau * t_end
            tau, e_le = 0.0, 0.0
            for k in range(self.steps):
                rho = self.samples[v, y, x, k]
                t_k = ti.exp(-sigma * tau)
                e_le += t_k * rho * ds
                d = g_e * (t_k - sigma * (e - e_le)) - g_t * sigma * t_end
                self.samples.grad[v, y, x, k] += ds * d
                tau += rho * ds


# ------------------------------------------------------------------ density + colour grids
# Voxel scenes (:mod:`taichi_dr.voxels`) hold per cell (density, r, g, b): an (nx, ny, nz, 4)
# array, or a sparse field of that shape. Same box, cell-centre and trilinear conventions as
# above, but the march composites exact per-segment opacities (voxel scenes hold opaque
# surfaces, where the left-Riemann sum above overshoots):
#
#     τ_i = ρ_i Δs  (density: optical depth per unit length),   α_i = 1 − exp(−τ_i),
#     C = Σ_i T_i α_i c_i + T_end · background,   T_{i+1} = T_i (1 − α_i),   T_0 = 1,
#
# c_i the trilinear colour at the sample. A ray is cut into ceil(length / step) equal segments
# (at most ``step`` long) with midpoint samples, and stops once T ≤ min_transmittance. The
# adjoint, per ray from its stored C (hand-written: exp in a runtime loop):
#
#     ∂C/∂c_i = T_i α_i,    ∂C/∂τ_i = T_{i+1} c_i − (C − Σ_{j≤i} T_j α_j c_j).
#
# ``prm`` packs the scalars: lo (3), cell size h, step, background (3), min_transmittance;
# ``block`` is a sparse grid's block size (block³ cells; 1 for dense grids). Dense grids pass
# ``sparse=False`` and ignore ``ptr`` and ``near``; sparse grids read inactive cells as 0,
# skip samples whose stencil touches no active block (``near``: per block, 1 when the block
# or a +1 neighbour is active), write gradients only into active blocks (``ptr``: the
# pointer SNode of the blocks) and record per block the density *pull* −min(∂L/∂ρ, 0) the
# adjoint would have written, active or not (``pull``: where the loss asks for density).

PRM_SIZE = 9


def ray_table(cameras, lo, hi) -> np.ndarray:
    """Every pixel's ray of every camera as rows (origin 3, unit direction 3, t_in, t_out),
    views × H × W rows (row 0 at the top), float64 (see :func:`camera_rays`)."""
    rows = []
    for c in cameras:
        o, d, t0, t1 = camera_rays(c, lo, hi)
        rows.append(np.concatenate([o, d, t0[..., None], t1[..., None]], axis=-1).reshape(-1, 8))
    return np.concatenate(rows)


@ti.func
def _cell(g, n):
    """Base cell (i32 3-vector) and fractions of the trilinear stencil at g = (x − lo) / h
    − 0.5, x a model point (cell centres at whole g), clamped to the n[a] centres per axis."""
    base = ti.Vector.zero(ti.i32, 3)
    frac = ti.Vector.zero(float, 3)
    for a in ti.static(range(3)):
        b, f = clamped_cell(g[a], n[a])
        base[a] = b
        frac[a] = f
    return base, frac


@ti.func
def _model_cell(p, prm: ti.template(), n):
    """:func:`_cell` of model point p with the packed lo and cell size of ``prm``."""
    lo = ti.Vector([prm[0], prm[1], prm[2]])
    return _cell((p - lo) / prm[3] - 0.5, n)


@ti.func
def _active(ptr: ti.template(), I, block, sparse: ti.template()):
    ok = True
    if ti.static(sparse):
        ok = ti.is_active(ptr, [I[0] // block, I[1] // block, I[2] // block, 0])
    return ok


@ti.func
def _near(near: ti.template(), base, block, sparse: ti.template()):
    ok = True
    if ti.static(sparse):
        ok = near[base[0] // block, base[1] // block, base[2] // block] != 0
    return ok


@ti.func
def _sample(grid: ti.template(), base, frac):
    v = ti.Vector.zero(float, 4)
    for corner in ti.static(ti.grouped(ti.ndrange(2, 2, 2))):
        w = corner_weight(frac, corner, -1)
        for c in ti.static(range(4)):
            v[c] += w * grid[base[0] + corner[0], base[1] + corner[1], base[2] + corner[2], c]
    return v


@ti.func
def _scatter(
    grad: ti.template(),
    ptr: ti.template(),
    pull: ti.template(),
    base,
    frac,
    g,
    block,
    sparse: ti.template(),
    colour,
):
    """Add g (density, r, g, b) times the trilinear weights into the stencil's cells; the
    colour channels only when ``colour`` (their gradient is 0 where the sample is empty).
    Sparse grids skip inactive cells and add the density *pull* −min(w·g_density, 0) (how
    much the loss wants density there) of every stencil cell into its block's ``pull``."""
    for corner in ti.static(ti.grouped(ti.ndrange(2, 2, 2))):
        I = base + corner
        w = corner_weight(frac, corner, -1)
        if ti.static(sparse):
            if g[0] < 0:
                pull[I[0] // block, I[1] // block, I[2] // block] += -w * g[0]
        if _active(ptr, I, block, sparse):
            grad[I[0], I[1], I[2], 0] += w * g[0]
            if colour:
                for c in ti.static(range(1, 4)):
                    grad[I[0], I[1], I[2], c] += w * g[c]


@ti.func
def _ray(rays: ti.template(), r, prm: ti.template()):
    o = ti.Vector([rays[r, 0], rays[r, 1], rays[r, 2]])
    d = ti.Vector([rays[r, 3], rays[r, 4], rays[r, 5]])
    length = ti.max(rays[r, 7] - rays[r, 6], 0.0)
    count = ti.cast(ti.ceil(length / prm[4]), ti.i32)
    return o, d, rays[r, 6], length / ti.max(count, 1), count


@ti.func
def march_rgba(
    grid: ti.template(),
    ptr: ti.template(),
    near: ti.template(),
    rays: ti.template(),
    r,
    prm: ti.template(),
    block,
    sparse: ti.template(),
    record: ti.template(),
    weights: ti.template(),
):
    """Colour C (3-vector, background included) and final transmittance of ray ``r``;
    with ``record``, each sample's weight T_i α_i goes into ``weights`` (per block, max)."""
    o, d, t0, ds, count = _ray(rays, r, prm)
    n = ti.Vector([grid.shape[0], grid.shape[1], grid.shape[2]])
    T = 1.0
    C = ti.Vector.zero(float, 3)
    i = 0
    while i < count and T > prm[8]:
        base, frac = _model_cell(o + (t0 + (i + 0.5) * ds) * d, prm, n)
        if _near(near, base, block, sparse):
            v = _sample(grid, base, frac)
            a = 1.0 - ti.exp(-v[0] * ds)
            w = T * a
            C += w * ti.Vector([v[1], v[2], v[3]])
            T *= 1.0 - a
            if ti.static(record):
                ti.atomic_max(weights[base[0] // block, base[1] // block, base[2] // block], w)
        i += 1
    return C + T * ti.Vector([prm[5], prm[6], prm[7]]), T


@ti.func
def march_rgba_adjoint(
    grid: ti.template(),
    grad: ti.template(),
    ptr: ti.template(),
    near: ti.template(),
    pull: ti.template(),
    rays: ti.template(),
    r,
    prm: ti.template(),
    block,
    C,
    g_c,
    sparse: ti.template(),
):
    """Given ray ``r``'s colour ``C`` and ∂L/∂C (``g_c``), add ∂L/∂(density, colour) of every
    sample into the stencil's cells of ``grad``."""
    o, d, t0, ds, count = _ray(rays, r, prm)
    n = ti.Vector([grid.shape[0], grid.shape[1], grid.shape[2]])
    T = 1.0
    acc = ti.Vector.zero(float, 3)
    i = 0
    while i < count and T > prm[8]:
        base, frac = _model_cell(o + (t0 + (i + 0.5) * ds) * d, prm, n)
        if _near(near, base, block, sparse):
            v = _sample(grid, base, frac)
            a = 1.0 - ti.exp(-v[0] * ds)
            c = ti.Vector([v[1], v[2], v[3]])
            w = T * a
            acc += w * c
            T_next = T * (1.0 - a)
            g_tau = g_c.dot(T_next * c - (C - acc))
            g = ti.Vector([g_tau * ds, g_c[0] * w, g_c[1] * w, g_c[2] * w])
            _scatter(grad, ptr, pull, base, frac, g, block, sparse, w != 0.0)
            T = T_next
        i += 1


@ti.kernel
def render_grid(
    grid: ti.types.ndarray(ndim=4),
    rays: ti.types.ndarray(ndim=2),
    prm: ti.types.ndarray(ndim=1),
    out: ti.types.ndarray(ndim=2),
    weights: ti.types.ndarray(ndim=3),
    record: ti.template(),
):
    """Dense (nx, ny, nz, 4) ``grid``: ``out`` (R, 4) = colour and opacity 1 − T of every ray
    (R, 8); with ``record``, per-block maxima of the sample weights into ``weights``."""
    for r in range(rays.shape[0]):
        C, T = march_rgba(grid, 0, weights, rays, r, prm, 1, False, record, weights)
        for c in ti.static(range(3)):
            out[r, c] = C[c]
        out[r, 3] = 1.0 - T


@ti.kernel
def render_grid_adjoint(
    grid: ti.types.ndarray(ndim=4),
    grad: ti.types.ndarray(ndim=4),
    rays: ti.types.ndarray(ndim=2),
    prm: ti.types.ndarray(ndim=1),
    out: ti.types.ndarray(ndim=2),
    g_out: ti.types.ndarray(ndim=2),
):
    """Dense grid: ∂L/∂grid += the adjoint of :func:`render_grid` for ∂L/∂colour ``g_out``
    (R, 3) (``out``: that forward pass's output)."""
    for r in range(rays.shape[0]):
        C = ti.Vector([out[r, 0], out[r, 1], out[r, 2]])
        g = ti.Vector([g_out[r, 0], g_out[r, 1], g_out[r, 2]])
        march_rgba_adjoint(grid, grad, 0, grad, grad, rays, r, prm, 1, C, g, False)
