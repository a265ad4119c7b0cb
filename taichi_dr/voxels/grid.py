"""Voxel grids of (density, r, g, b) per cell, dense or sparse, rendered by the emission–absorption
marcher of :mod:`taichi_dr.sim.volume` (alpha compositing, hand-written adjoint), with a
total-variation regularizer and a projected Adam step.

Both grids are ``n³`` cells filling the cube ``box = (lo, hi)`` (cell centres at
``lo + (I + ½) h``); density is the optical depth per unit length (≥ 0), colour linear RGB in
[0, 1]. Values, gradients and Adam's two moments are four arrays of shape (n, n, n, 4).

* :class:`DenseGrid` keeps them in ``ti.ndarray``s: every kernel compiles once and serves all
  resolutions (coarse-to-fine growth costs no compilation).
* :class:`SparseGrid` keeps them in Taichi sparse SNodes — a pointer array over blocks of
  ``block³`` cells, each block holding the four arrays densely — so only *active* blocks use
  memory. Cells of inactive blocks read as 0 and get no gradient (the adjoint writes only into
  active blocks, so a backward pass never allocates); samples whose trilinear stencil touches
  no active block are skipped. The backward pass records, per block, the density *pull*
  (−∂L/∂ρ where negative) it would write, active or not: where the loss asks for density.
  :meth:`SparseGrid.set_blocks` activates and deactivates blocks (pruning and growth). Its
  kernels take the SNode fields as template arguments, so they compile once per grid
  instance (a few seconds): build one and prune and grow it.

Rays are rows (origin, direction, t_in, t_out) from :func:`taichi_dr.sim.volume.ray_table`.
"""

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import taichi as ti

from .. import backend
from ..errors import UserError
from ..sim import volume
from ..sim.volume import march_rgba, march_rgba_adjoint

CHANNELS = 4  # density, r, g, b
MAX_CELLS = 1 << 27  # 512³: (values, gradients, two moments) × 4 channels × 4 B = 8 GiB in f32
ADAM = (0.9, 0.99, 1e-8)  # β1, β2, ε


@dataclass(frozen=True)
class March:
    """How rays are marched: segments of at most ``step`` cells, the ``background`` RGB
    behind the grid, and early termination once the transmittance is ≤
    ``min_transmittance`` (0: never; the adjoint stops at the same sample)."""

    step: float = 0.5
    background: tuple = (0.0, 0.0, 0.0)
    min_transmittance: float = 0.0

    def __post_init__(self):
        if not (np.isfinite(self.step) and self.step > 0):
            raise UserError(f"march step must be a positive number of cells, got {self.step}")
        bg = np.asarray(self.background, np.float64)
        if bg.shape != (3,) or not np.all(np.isfinite(bg)):
            raise UserError(f"background must be 3 finite numbers, got {self.background!r}")
        if not 0 <= self.min_transmittance < 1:
            raise UserError(f"min_transmittance must lie in [0, 1), got {self.min_transmittance}")


def check_resolution(n, block: int = 1) -> int:
    """``n`` cells per side as an int: ≥ 2, a multiple of ``block``, at most ∛MAX_CELLS."""
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise UserError(f"voxel resolution must be an integer ≥ 2, got {n}")
    n = int(n)
    if n**3 > MAX_CELLS:
        gib = n**3 * CHANNELS * 4 * backend.np_real()(0).nbytes / 2**30
        raise UserError(
            f"a {n}³ voxel grid needs {gib:.1f} GiB for values, gradients and Adam's moments; "
            f"use at most {round(MAX_CELLS ** (1 / 3))} cells per side"
        )
    if n % block:
        raise UserError(f"sparse grid resolution {n} must be a multiple of the block size {block}")
    return n


def resample(values: np.ndarray, n: int) -> np.ndarray:
    """Trilinear resampling of (m, m, m, C) cell values to (n, n, n, C) over the same box
    (cell-centred, clamped to the outermost centres: the marcher's own interpolation)."""
    m = values.shape[0]
    x = (np.arange(n) + 0.5) * m / n - 0.5
    coords = np.stack(np.meshgrid(x, x, x, indexing="ij"))
    out = [
        scipy.ndimage.map_coordinates(values[..., c], coords, order=1, mode="nearest")
        for c in range(values.shape[-1])
    ]
    return np.stack(out, axis=-1)


# --------------------------------------------------------------------------- shared math


@ti.func
def _tv_cell(
    grid: ti.template(),
    grad: ti.template(),
    ptr: ti.template(),
    I,
    lam: ti.template(),
    scale,
    eps,
    block,
    sparse: ti.template(),
):
    """λ_c · scale · sqrt(Σ_axis (v[I + e_axis] − v[I])² + ε) − sqrt(ε) per channel c at cell I
    (forward differences inside the grid, and for sparse grids into active cells only);
    adds its gradient into ``grad``; returns the value."""
    n = ti.Vector([grid.shape[0], grid.shape[1], grid.shape[2]])
    value = 0.0
    for c in ti.static(range(CHANNELS)):
        here = grid[I[0], I[1], I[2], c]
        diff = ti.Vector.zero(float, 3)
        for a in ti.static(range(3)):
            J = I
            J[a] += 1
            if J[a] < n[a] and volume._active(ptr, J, block, sparse):
                diff[a] = grid[J[0], J[1], J[2], c] - here
        root = ti.sqrt(diff.norm_sqr() + eps)
        value += lam[c] * scale * (root - ti.sqrt(eps))
        g = lam[c] * scale / root * diff
        for a in ti.static(range(3)):
            J = I
            J[a] += 1
            if diff[a] != 0.0:
                grad[J[0], J[1], J[2], c] += g[a]
                grad[I[0], I[1], I[2], c] -= g[a]
    return value


@ti.func
def _adam_cell(
    grid: ti.template(),
    grad: ti.template(),
    m: ti.template(),
    v: ti.template(),
    i,
    j,
    k,
    c,
    hp: ti.template(),
):
    """Adam on one value (rate hp[0] for density, hp[1] for colour; β1, β2, bias
    corrections 1 − β^t, ε in hp[2:7]), then the projection (density ≥ 0, colour in [0, 1])
    and the gradient cleared."""
    g = grad[i, j, k, c]
    m1 = hp[2] * m[i, j, k, c] + (1.0 - hp[2]) * g
    m2 = hp[3] * v[i, j, k, c] + (1.0 - hp[3]) * g * g
    m[i, j, k, c] = m1
    v[i, j, k, c] = m2
    rate = ti.select(c == 0, hp[0], hp[1])
    x = grid[i, j, k, c] - rate * (m1 / hp[4]) / (ti.sqrt(m2 / hp[5]) + hp[6])
    grid[i, j, k, c] = ti.select(c == 0, ti.max(x, 0.0), ti.math.clamp(x, 0.0, 1.0))
    grad[i, j, k, c] = 0.0


# --------------------------------------------------------------------------- dense kernels


@ti.kernel
def _tv_dense(
    grid: ti.types.ndarray(ndim=4),
    grad: ti.types.ndarray(ndim=4),
    lam: ti.types.ndarray(ndim=1),
    scale: float,
    eps: float,
) -> float:
    value = 0.0
    for i, j, k in ti.ndrange(grid.shape[0], grid.shape[1], grid.shape[2]):
        value += _tv_cell(grid, grad, 0, ti.Vector([i, j, k]), lam, scale, eps, 1, False)
    return value


@ti.kernel
def _adam_dense(
    grid: ti.types.ndarray(ndim=4),
    grad: ti.types.ndarray(ndim=4),
    m: ti.types.ndarray(ndim=4),
    v: ti.types.ndarray(ndim=4),
    hp: ti.types.ndarray(ndim=1),
):
    for i, j, k, c in ti.ndrange(grid.shape[0], grid.shape[1], grid.shape[2], CHANNELS):
        _adam_cell(grid, grad, m, v, i, j, k, c, hp)


# --------------------------------------------------------------------------- sparse kernels


@ti.kernel
def _render_sparse(
    grid: ti.template(),
    ptr: ti.template(),
    near: ti.types.ndarray(ndim=3),
    rays: ti.types.ndarray(ndim=2),
    prm: ti.types.ndarray(ndim=1),
    block: ti.i32,
    out: ti.types.ndarray(ndim=2),
    weights: ti.types.ndarray(ndim=3),
    record: ti.template(),
):
    for r in range(rays.shape[0]):
        C, T = march_rgba(grid, ptr, near, rays, r, prm, block, True, record, weights)
        for c in ti.static(range(3)):
            out[r, c] = C[c]
        out[r, 3] = 1.0 - T


@ti.kernel
def _render_sparse_adjoint(
    grid: ti.template(),
    grad: ti.template(),
    ptr: ti.template(),
    near: ti.types.ndarray(ndim=3),
    pull: ti.types.ndarray(ndim=3),
    rays: ti.types.ndarray(ndim=2),
    prm: ti.types.ndarray(ndim=1),
    block: ti.i32,
    out: ti.types.ndarray(ndim=2),
    g_out: ti.types.ndarray(ndim=2),
):
    for r in range(rays.shape[0]):
        C = ti.Vector([out[r, 0], out[r, 1], out[r, 2]])
        g = ti.Vector([g_out[r, 0], g_out[r, 1], g_out[r, 2]])
        march_rgba_adjoint(grid, grad, ptr, near, pull, rays, r, prm, block, C, g, True)


@ti.kernel
def _tv_sparse(
    grid: ti.template(),
    grad: ti.template(),
    ptr: ti.template(),
    lam: ti.types.ndarray(ndim=1),
    scale: float,
    eps: float,
    block: ti.i32,
) -> float:
    value = 0.0
    for i, j, k, c in grid:  # active cells only
        if c == 0:
            value += _tv_cell(grid, grad, ptr, ti.Vector([i, j, k]), lam, scale, eps, block, True)
    return value


@ti.kernel
def _adam_sparse(
    grid: ti.template(),
    grad: ti.template(),
    m: ti.template(),
    v: ti.template(),
    hp: ti.types.ndarray(ndim=1),
):
    for i, j, k, c in grid:
        _adam_cell(grid, grad, m, v, i, j, k, c, hp)


@ti.kernel
def _set_blocks(ptr: ti.template(), mask: ti.types.ndarray(ndim=3)):
    ti.loop_config(serialize=True)  # parallel deactivation of sibling blocks races
    for i, j, k in ti.ndrange(mask.shape[0], mask.shape[1], mask.shape[2]):
        if mask[i, j, k] != 0:
            ti.activate(ptr, [i, j, k, 0])
        elif ti.is_active(ptr, [i, j, k, 0]):
            ti.deactivate(ptr, [i, j, k, 0])


@ti.kernel
def _load(grid: ti.template(), src: ti.types.ndarray(ndim=4)):
    for i, j, k, c in grid:
        grid[i, j, k, c] = src[i, j, k, c]


@ti.kernel
def _clear(f: ti.template()):
    for I in ti.grouped(f):
        f[I] = 0.0


# --------------------------------------------------------------------------- grids


class _Grid:
    """What both grids share: geometry, the ``prm`` block of the marcher, host helpers."""

    block = 1

    def __init__(self, n: int, box):
        backend.ensure_init()
        lo, hi = (np.asarray(b, np.float64) for b in box)
        if lo.shape != (3,) or hi.shape != (3,) or not np.allclose(hi - lo, (hi - lo)[0]):
            raise UserError(f"voxel box must be a cube (lo, hi) of two 3-vectors, got {box!r}")
        if not (hi - lo)[0] > 0:
            raise UserError(f"voxel box needs lo < hi, got {box!r}")
        self.n, self.lo, self.hi = n, lo, hi
        self.h = float((hi - lo)[0] / n)
        self._dummy = ti.ndarray(backend.real(), (1, 1, 1))

    def prm(self, march: March) -> np.ndarray:
        """The marcher's scalars (see :mod:`taichi_dr.sim.volume`)."""
        p = np.zeros(volume.PRM_SIZE, backend.np_real())
        p[:3], p[3], p[4] = self.lo, self.h, march.step * self.h
        p[5:8], p[8] = march.background, march.min_transmittance
        return p

    @staticmethod
    def _adam_hp(lr_density, lr_colour, t):
        b1, b2, eps = ADAM
        return np.array(
            [lr_density, lr_colour, b1, b2, 1 - b1**t, 1 - b2**t, eps], backend.np_real()
        )

    def set_moments(self, m, v, steps: int) -> None:
        """Restore Adam's moments (n, n, n, 4) and step count (e.g. from a checkpoint)."""
        for name, a in (("m", m), ("v", v)):
            self._load(getattr(self, name), np.ascontiguousarray(a, backend.np_real()))
        self.steps = int(steps)

    def block_weights(self) -> ti.Ndarray:
        """A zeroed (n/block)³ array for :meth:`render`'s ``weights``."""
        nb = self.n // self.block
        w = ti.ndarray(backend.real(), (nb, nb, nb))
        w.fill(0)
        return w


class DenseGrid(_Grid):
    """All n³ cells in ``ti.ndarray``s (see the module docstring); ``values`` optional
    (n, n, n, 4) start."""

    def __init__(self, n, box, values=None):
        super().__init__(check_resolution(n), box)
        real, shape = backend.real(), (self.n,) * 3 + (CHANNELS,)
        self.values, self.grads, self.m, self.v = (ti.ndarray(real, shape) for _ in range(4))
        for a in (self.values, self.grads, self.m, self.v):
            a.fill(0)
        if values is not None:
            self.values.from_numpy(np.ascontiguousarray(values, backend.np_real()))
        self.steps = 0

    def render(self, rays, march: March, weights=None) -> np.ndarray:
        """(R, 4): colour and opacity of each ray (R, 8); ``weights`` (see
        :meth:`block_weights`) gets the per-block maximum sample weight when given."""
        out = np.empty((len(rays), 4), backend.np_real())
        record = weights is not None
        w = weights if record else self._dummy
        volume.render_grid(self.values, rays, self.prm(march), out, w, record)
        return out

    def backward(self, rays, march: March, out, g_out) -> None:
        """Add ∂L/∂values into ``grads`` for ∂L/∂colour ``g_out`` (R, 3) of :meth:`render`'s
        ``out``."""
        volume.render_grid_adjoint(self.values, self.grads, rays, self.prm(march), out, g_out)

    def tv(self, lam_density: float, lam_colour: float, eps: float = 1e-8) -> float:
        """Add the total variation (mean over the n³ cells of each channel's gradient norm,
        weighted) to the loss: returns its value, adds its gradient into ``grads``."""
        lam = np.array([lam_density] + [lam_colour] * 3, backend.np_real())
        return _tv_dense(self.values, self.grads, lam, 1.0 / self.n**3, eps)

    def step(self, lr_density: float, lr_colour: float) -> None:
        """One projected Adam step from ``grads`` (cleared afterwards)."""
        self.steps += 1
        hp = self._adam_hp(lr_density, lr_colour, self.steps)
        _adam_dense(self.values, self.grads, self.m, self.v, hp)

    def zero_grad(self) -> None:
        self.grads.fill(0)

    @staticmethod
    def _load(array, values) -> None:
        array.from_numpy(values)

    def to_numpy(self) -> np.ndarray:
        return self.values.to_numpy()

    def gradients(self) -> np.ndarray:
        return self.grads.to_numpy()

    def memory_bytes(self) -> int:
        """Bytes of values, gradients and Adam's moments."""
        return 4 * self.n**3 * CHANNELS * backend.np_real()(0).nbytes

    def upsampled(self, n: int) -> "DenseGrid":
        """A new dense grid of n³ cells with these values resampled (Adam restarts)."""
        return DenseGrid(n, (self.lo, self.hi), resample(self.to_numpy(), n))


class SparseGrid(_Grid):
    """Blocks of ``block³`` cells in Taichi sparse SNodes (see the module docstring);
    ``active`` (nb, nb, nb) bool starts the active blocks (default: all), ``values``
    (n, n, n, 4) their contents; at most ``max_blocks`` blocks may be active."""

    def __init__(self, n, box, block: int = 4, active=None, values=None, max_blocks=None):
        if isinstance(block, bool) or int(block) != block or block < 2:
            raise UserError(f"sparse block size must be an integer ≥ 2, got {block}")
        self.block = int(block)
        super().__init__(check_resolution(n, self.block), box)
        nb = self.n // self.block
        self.max_blocks = nb**3 if max_blocks is None else int(max_blocks)
        if self.max_blocks < 1:
            raise UserError(f"max_blocks must be at least 1, got {max_blocks}")
        real = backend.real()
        self.values, self.grads, self.m, self.v = (ti.field(real) for _ in range(4))
        builder = ti.FieldsBuilder()
        self.ptr = builder.pointer(ti.ijkl, (nb, nb, nb, 1))
        self.ptr.dense(ti.ijkl, (self.block,) * 3 + (CHANNELS,)).place(
            self.values, self.grads, self.m, self.v
        )
        builder.finalize()
        self.active = np.zeros((nb,) * 3, bool)
        self.near = ti.ndarray(ti.i32, (nb,) * 3)
        self.pull = ti.ndarray(backend.real(), (nb,) * 3)  # since the last set_blocks
        self.pull.fill(0)
        self.steps = 0
        self.set_blocks(np.ones((nb,) * 3, bool) if active is None else active, values)

    def set_blocks(self, active, values=None) -> tuple[int, int]:
        """Make exactly the blocks of the (nb, nb, nb) mask ``active`` active: new blocks
        start at 0 (or at ``values``, an (n, n, n, 4) array, which also overwrites the kept
        blocks), dropped blocks free their memory. Returns (added, removed)."""
        active = np.asarray(active, bool)
        if active.shape != self.active.shape:
            raise UserError(f"block mask has shape {active.shape}, expected {self.active.shape}")
        count = int(active.sum())
        if count > self.max_blocks:
            raise UserError(
                f"the sparse grid may hold {self.max_blocks} blocks but {count} are needed; "
                "raise max_blocks (--max-blocks) or the pruning threshold"
            )
        added = int((active & ~self.active).sum())
        removed = int((self.active & ~active).sum())
        ti.set_logging_level(ti.ERROR)  # its first compilation warns of int32 casts: harmless
        try:
            _set_blocks(self.ptr, active.astype(np.int32))
        finally:
            ti.set_logging_level(ti.WARN)
        self.active = active
        near = np.zeros_like(active)
        for offset in np.ndindex(2, 2, 2):  # the block or a +1 neighbour (a stencil's reach)
            src = active[tuple(slice(o, None) for o in offset)]
            near[tuple(slice(0, s) for s in src.shape)] |= src
        self.near.from_numpy(near.astype(np.int32))
        self.pull.fill(0)
        if values is not None:
            _load(self.values, np.ascontiguousarray(values, backend.np_real()))
        return added, removed

    @property
    def num_blocks(self) -> int:
        return int(self.active.sum())

    def render(self, rays, march: March, weights=None) -> np.ndarray:
        out = np.empty((len(rays), 4), backend.np_real())
        record = weights is not None
        w, prm = weights if record else self._dummy, self.prm(march)
        _render_sparse(self.values, self.ptr, self.near, rays, prm, self.block, out, w, record)
        return out

    def backward(self, rays, march: March, out, g_out) -> None:
        """As :meth:`DenseGrid.backward` (active cells only); also adds every block's density
        pull into :attr:`pull`."""
        prm = self.prm(march)
        _render_sparse_adjoint(
            self.values, self.grads, self.ptr, self.near, self.pull, rays, prm, self.block,
            out, g_out,
        )  # fmt: skip

    def tv(self, lam_density: float, lam_colour: float, eps: float = 1e-8) -> float:
        lam = np.array([lam_density] + [lam_colour] * 3, backend.np_real())
        return _tv_sparse(self.values, self.grads, self.ptr, lam, 1.0 / self.n**3, eps, self.block)

    def step(self, lr_density: float, lr_colour: float) -> None:
        self.steps += 1
        hp = self._adam_hp(lr_density, lr_colour, self.steps)
        _adam_sparse(self.values, self.grads, self.m, self.v, hp)

    def zero_grad(self) -> None:
        _clear(self.grads)

    @staticmethod
    def _load(field, values) -> None:
        _load(field, values)  # active blocks only

    def to_numpy(self) -> np.ndarray:
        """(n, n, n, 4) values, 0 in inactive blocks."""
        return self.values.to_numpy()

    def gradients(self) -> np.ndarray:
        return self.grads.to_numpy()

    def memory_bytes(self) -> int:
        """Bytes of values, gradients and Adam's moments in the active blocks, plus the
        pointer array (8 bytes per block)."""
        cells = self.num_blocks * self.block**3 * CHANNELS
        return 4 * cells * backend.np_real()(0).nbytes + 8 * self.active.size
