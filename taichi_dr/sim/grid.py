"""A staggered (MAC) grid in 2D or 3D and its boundary conditions.

Lengths are in cells (dx = 1). Cell ``I`` has its centre at ``I + 0.5``; velocity component
``c`` lives on the faces normal to axis ``c``: face ``I`` of component ``c`` sits at ``I + 0.5``
except along ``c``, where it sits at ``I[c]`` (between cells ``I - e_c`` and ``I``).

Each side of the box is ``closed`` (a solid wall: zero normal velocity, no pressure coupling),
``open`` (zero pressure outside: smoke and velocity leave freely) or ``periodic`` (both sides of
an axis together). A periodic axis stores ``n`` faces, any other axis ``n + 1``.
"""

import itertools
import os

import taichi as ti

from ..errors import UserError

KINDS = ("closed", "open", "periodic")
MAX_CELLS = 1 << 27


def parse_boundary(boundary, dim: int) -> tuple[tuple[str, str], ...]:
    """Normalise a boundary spec to ``((lo, hi),) * dim``.

    Accepts one kind for every side (``"closed"``), one kind per axis (``("periodic",
    "closed")``) or one ``(lo, hi)`` pair per axis (``(("closed", "closed"), ("closed",
    "open"))``: a box open at the top)."""
    spec = (boundary,) * dim if isinstance(boundary, str) else tuple(boundary)
    if len(spec) != dim:
        raise UserError(f"boundary needs {dim} entries (one per axis), got {boundary!r}")
    sides = []
    for axis, s in enumerate(spec):
        lo, hi = (s, s) if isinstance(s, str) else tuple(s)
        for k in (lo, hi):
            if k not in KINDS:
                raise UserError(f"unknown boundary {k!r}; choose one of {', '.join(KINDS)}")
        if (lo == "periodic") != (hi == "periodic"):
            raise UserError(f"axis {axis}: periodic needs both sides periodic, got {lo}/{hi}")
        sides.append((lo, hi))
    return tuple(sides)


def check_shape(shape, bytes_per_cell: int) -> tuple[int, ...]:
    """Validate a grid shape (2 or 3 axes, each ≥ 4, fitting in memory)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3):
        raise UserError(f"grid must have 2 or 3 axes, got shape {shape}")
    if min(shape) < 4:
        raise UserError(f"grid sides must be at least 4 cells, got {shape}")
    cells = 1
    for n in shape:
        cells *= n
    need = cells * bytes_per_cell
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        have = 1 << 34
    if cells > MAX_CELLS or need > 0.8 * have:
        raise UserError(
            f"grid {shape} is too large for memory: it needs about {need / 2**30:.1f} GiB (of "
            f"{have / 2**30:.1f} GiB here); use a smaller grid, fewer steps or checkpointing"
        )
    return shape


@ti.func
def accumulate(f: ti.template(), s, I, v, atomic: ti.template()):
    """``f[s, I] += v``: atomic, or a plain read-modify-write."""
    if ti.static(atomic):
        ti.atomic_add(f[s, I], v)
    else:
        f[s, I] = f[s, I] + v


@ti.func
def clamped_cell(x, n):
    """Base node b and fraction x − b of lattice coordinate x on an axis of n ≥ 2 nodes
    (node k at k), x clamped to [0, n − 1]: the linear stencil is nodes b and b + 1."""
    x = ti.math.clamp(x, 0.0, n - 1.0)
    b = ti.min(ti.cast(x, ti.i32), n - 2)
    return b, x - b


@ti.func
def corner_weight(frac, corner: ti.template(), skip: ti.template()):
    """Multilinear weight of stencil ``corner`` (0/1 per axis) at fractions ``frac``: the
    product over axes, except axis ``skip`` (−1: none), of frac or 1 − frac."""
    w = 1.0
    for a in ti.static(range(len(corner))):
        if ti.static(a != skip):
            if ti.static(corner[a]):
                w *= frac[a]
            else:
                w *= 1.0 - frac[a]
    return w


@ti.data_oriented
class MacGrid:
    """Static description of the grid: shape, per-side boundary kinds, and Taichi helpers
    (bilinear/trilinear sampling, wall tests, neighbour lookup) used by the solver kernels."""

    def __init__(self, shape, boundary="closed"):
        self.shape = tuple(shape)
        self.dim = len(self.shape)
        self.sides = parse_boundary(boundary, self.dim)
        self.periodic = tuple(lo == "periodic" for lo, _ in self.sides)
        self.closed = tuple((lo == "closed", hi == "closed") for lo, hi in self.sides)
        # No open side: pressure is defined up to a constant (the Poisson matrix is singular).
        self.singular = not any(k == "open" for side in self.sides for k in side)

    def face_shape(self, c: int) -> tuple[int, ...]:
        return tuple(n + (a == c and not self.periodic[a]) for a, n in enumerate(self.shape))

    def offset(self, c: int):
        """Position of entry 0 of a cell field (c = -1) or face field c, in cells."""
        return [0.0 if a == c else 0.5 for a in range(self.dim)]

    @ti.func
    def is_wall(self, c: ti.template(), I):
        """True when face ``I`` of component ``c`` is a closed wall."""
        wall = False
        if ti.static(not self.periodic[c]):
            if ti.static(self.closed[c][0]):
                wall = wall or I[c] == 0
            if ti.static(self.closed[c][1]):
                wall = wall or I[c] == self.shape[c]
        return wall

    @ti.func
    def wrap(self, I, a: ti.template()):
        """Cell index ``I`` with axis ``a`` wrapped when that axis is periodic
        (``I[a]`` at most one period out of range: in [−n, 2n))."""
        J = I
        if ti.static(self.periodic[a]):
            n = ti.static(self.shape[a])
            if ti.static(n & (n - 1) == 0):
                J[a] = J[a] & (n - 1)
            else:
                J[a] = ti.select(J[a] < 0, J[a] + n, ti.select(J[a] >= n, J[a] - n, J[a]))
        return J

    @ti.func
    def inside(self, I, a: ti.template()):
        """``I[a]`` in range (always, on a periodic axis: wrap first)."""
        ok = True
        if ti.static(not self.periodic[a]):
            ok = 0 <= I[a] < self.shape[a]
        return ok

    @ti.func
    def _locate(self, pos, c: ti.template()):
        """Base index, fractional position and d(frac)/d(pos) (1, or 0 where clamped) of
        ``pos`` in the lattice of field ``c``: clamped at non-periodic sides, the base
        wrapped into range at periodic ones (its +1 neighbour may still need a wrap)."""
        g = pos - ti.Vector(ti.static(self.offset(c)))
        base = ti.Vector.zero(ti.i32, self.dim)
        frac = g * 0.0
        slope = g * 0.0
        for a in ti.static(range(self.dim)):
            n = ti.static(self._extent(c, a))
            if ti.static(self.periodic[a]):
                fl = ti.floor(g[a])
                b = ti.cast(fl, ti.i32)
                if ti.static(n & (n - 1) == 0):
                    base[a] = b & (n - 1)
                else:
                    base[a] = b % n
                frac[a] = g[a] - fl
                slope[a] = 1.0
            else:
                b, f = clamped_cell(g[a], n)
                base[a] = b
                frac[a] = f
                slope[a] = ti.select((g[a] > 0.0) & (g[a] < n - 1.0), 1.0, 0.0)
        return base, frac, slope

    def _extent(self, c: int, a: int) -> int:
        return self.face_shape(c)[a] if c >= 0 else self.shape[a]

    @ti.func
    def _corner(self, base, corner: ti.template(), c: ti.template()):
        """Index of ``corner`` (0/1 per axis) of the cell at the wrapped ``base``."""
        idx = base + ti.Vector(corner, ti.i32)
        for a in ti.static(range(self.dim)):
            if ti.static(self.periodic[a]):
                n = ti.static(self._extent(c, a))
                idx[a] = ti.select(idx[a] == n, 0, idx[a])
        return idx

    @ti.func
    def sample(self, f: ti.template(), s, pos, c: ti.template()):
        """(Bi/tri)linear sample of slot ``s`` of field ``f`` (indexed ``f[s, I]``; cells for
        c = -1, else faces of component c) at ``pos`` (cells). Clamped at non-periodic sides,
        wrapped at periodic ones."""
        base, frac, _ = self._locate(pos, c)
        result = 0.0
        for corner in ti.static(self._corners()):
            result += corner_weight(frac, corner, -1) * f[s, self._corner(base, corner, c)]
        return result

    @ti.func
    def sample_adjoint(self, f: ti.template(), s, pos, c: ti.template(), g, atomic: ti.template()):
        """Adjoint of :meth:`sample` for output gradient ``g``: adds the weights × g to
        ``f.grad`` (atomically, or with plain adds when ``atomic`` is False: the caller
        guarantees no other thread writes there) and returns d(sample)/d(pos) × g."""
        base, frac, slope = self._locate(pos, c)
        dpos = slope * 0.0
        for corner in ti.static(self._corners()):
            idx = self._corner(base, corner, c)
            accumulate(f.grad, s, idx, corner_weight(frac, corner, -1) * g, atomic)
            v = f[s, idx]
            for a in ti.static(range(self.dim)):
                dpos[a] += (2.0 * corner[a] - 1.0) * v * corner_weight(frac, corner, a)
        return dpos * slope * g

    def _corners(self):
        return [tuple(k) for k in itertools.product((0, 1), repeat=self.dim)]

    @ti.func
    def sample_range(self, f: ti.template(), s, pos, c: ti.template()):
        """(min, max) of the values :meth:`sample` interpolates between."""
        base, _, _ = self._locate(pos, c)
        lo, hi = f[s, base], f[s, base]
        for corner in ti.static(self._corners()):
            v = f[s, self._corner(base, corner, c)]
            lo = ti.select(v < lo, v, lo)
            hi = ti.select(v > hi, v, hi)
        return lo, hi
