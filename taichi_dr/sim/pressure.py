"""Pressure Poisson solve on a :class:`MacGrid`: Jacobi (fixed sweeps) or conjugate gradient.

Solves ``A p = rhs`` with ``A = −∇²`` (5/7-point stencil; no coupling across closed walls,
``p = 0`` beyond open sides, wrap-around on periodic axes). Both solvers are *linear and
symmetric* maps ``S: rhs → p`` — Jacobi from ``p = 0`` with a fixed sweep count is the polynomial
``Σ_k (D⁻¹N)^k D⁻¹`` in a symmetric matrix, CG to a tight tolerance is ``A⁺`` — so the adjoint
of the solve is the same solve applied to the output gradient (``solve(p.grad, rhs.grad)``;
no solver iterate is stored).
With no open side ``A`` is singular (constants): CG then works on mean-free vectors.
"""

import taichi as ti

from .. import backend
from ..errors import UserError

METHODS = ("jacobi", "cg")


@ti.data_oriented
class PressureSolver:
    """Owns ``rhs`` and ``p`` (cell fields with gradients) and its scratch vectors.

    ``forward()`` sets ``p = S(rhs)``; ``solve(src, x)`` sets ``x = S(src)`` for any pair of
    cell fields (e.g. gradients, for the adjoint).
    After each solve ``iterations`` and ``residual`` (max |rhs − A p|, which equals the
    divergence left after projection) describe the last call."""

    def __init__(self, grid, method="cg", iters=10, tol=1e-5, max_iters=0):
        if method not in METHODS:
            raise UserError(f"unknown pressure solver {method!r}; choose jacobi or cg")
        if int(iters) < 1:
            raise UserError(f"jacobi iterations must be at least 1, got {iters}")
        if not tol > 0:
            raise UserError(f"CG tolerance must be positive, got {tol}")
        self.grid, self.method = grid, method
        self.iters, self.tol = int(iters), float(tol)
        self.max_iters = int(max_iters) or 20 * max(grid.shape)
        real = backend.real()
        shape = grid.shape
        self.rhs = ti.field(real, shape, needs_grad=True)
        self.p = ti.field(real, shape, needs_grad=True)
        self._diag = ti.field(real, shape)
        self._r, self._d, self._q = (ti.field(real, shape) for _ in range(3))
        self._rmax = ti.field(real, ())
        self.iterations, self.residual = 0, float("nan")
        self._init_diag()

    # ---- public -------------------------------------------------------------------------
    def forward(self):
        self.solve(self.rhs, self.p)

    def solve(self, src, x):
        if self.method == "jacobi":
            self._jacobi(src, x)
        else:
            self._cg(src, x)

    # ---- stencil helpers ------------------------------------------------------------------
    @ti.func
    def neighbour_sum(self, x: ti.template(), I):
        """Σ of ``x`` over the neighbours of cell ``I`` across non-wall faces (0 outside)."""
        total = 0.0
        for a in ti.static(range(self.grid.dim)):
            e = ti.Vector.unit(self.grid.dim, a, ti.i32)
            for d in ti.static((-1, 1)):
                J = I + d * e  # outside a closed side is behind a wall: no is_wall test
                if self.grid.inside(J, a):
                    total += x[self.grid.wrap(J, a)]
        return total

    @ti.kernel
    def _init_diag(self):
        for I in ti.grouped(self._diag):
            n = 0.0
            for a in ti.static(range(self.grid.dim)):
                e = ti.Vector.unit(self.grid.dim, a, ti.i32)
                n += ti.select(self.grid.is_wall(a, I), 0.0, 1.0)
                n += ti.select(self.grid.is_wall(a, I + e), 0.0, 1.0)
            self._diag[I] = n

    # ---- kernels ------------------------------------------------------------------------
    @ti.kernel
    def _jacobi_run(self, src: ti.template(), x: ti.template()):
        """``iters`` Jacobi sweeps from x = 0 (one launch), ping-ponging with _r so that
        the last sweep lands in x."""
        bufs = ti.static((x, self._r))
        first = ti.static((self.iters + 1) % 2)
        for I in ti.grouped(x):
            bufs[first][I] = src[I] / self._diag[I]
        for k in ti.static(range(1, self.iters)):
            for I in ti.grouped(x):
                nb = self.neighbour_sum(bufs[(first + k - 1) % 2], I)
                bufs[(first + k) % 2][I] = (src[I] + nb) / self._diag[I]

    @ti.kernel
    def _jacobi_first(self, src: ti.template(), x: ti.template()):
        for I in ti.grouped(x):
            x[I] = src[I] / self._diag[I]

    @ti.kernel
    def _jacobi_sweep(self, src: ti.template(), x_old: ti.template(), x_new: ti.template()):
        for I in ti.grouped(x_new):
            x_new[I] = (src[I] + self.neighbour_sum(x_old, I)) / self._diag[I]

    @ti.kernel
    def _apply_a(self, x: ti.template(), y: ti.template()):
        for I in ti.grouped(y):
            y[I] = self._diag[I] * x[I] - self.neighbour_sum(x, I)

    @ti.kernel
    def _dot(self, a: ti.template(), b: ti.template()) -> ti.f64:
        s = 0.0
        for I in ti.grouped(a):
            s += a[I] * b[I]
        return s

    @ti.kernel
    def _start_cg(self, src: ti.template(), x: ti.template(), mean: float):
        for I in ti.grouped(x):
            x[I] = 0.0
            self._r[I] = src[I] - mean
            self._d[I] = self._r[I]

    @ti.kernel
    def _update_xr(self, x: ti.template(), alpha: float) -> ti.f64:
        self._rmax[None] = 0.0
        rr = 0.0
        for I in ti.grouped(x):
            x[I] += alpha * self._d[I]
            self._r[I] -= alpha * self._q[I]
            rr += self._r[I] ** 2
            ti.atomic_max(self._rmax[None], ti.abs(self._r[I]))
        return rr

    @ti.kernel
    def _true_residual(self, src: ti.template(), x: ti.template(), mean: float) -> ti.f64:
        """r = d = src − mean − A x; returns max |r|."""
        m = 0.0
        for I in ti.grouped(x):
            r = src[I] - mean - (self._diag[I] * x[I] - self.neighbour_sum(x, I))
            self._r[I] = r
            self._d[I] = r
            ti.atomic_max(m, ti.abs(r))
        return m

    @ti.kernel
    def _update_d(self, beta: float):
        for I in ti.grouped(self._d):
            self._d[I] = self._r[I] + beta * self._d[I]

    @ti.kernel
    def _sum(self, a: ti.template()) -> ti.f64:
        s = 0.0
        for I in ti.grouped(a):
            s += a[I]
        return s

    @ti.kernel
    def _max_abs(self, a: ti.template()) -> ti.f64:
        m = 0.0
        for I in ti.grouped(a):
            ti.atomic_max(m, ti.abs(a[I]))
        return m

    @ti.kernel
    def _residual_max(self, src: ti.template(), x: ti.template()) -> ti.f64:
        m = 0.0
        for I in ti.grouped(x):
            r = src[I] - (self._diag[I] * x[I] - self.neighbour_sum(x, I))
            ti.atomic_max(m, ti.abs(r))
        return m

    # ---- drivers --------------------------------------------------------------------------
    def _jacobi(self, src, x):
        if self.iters <= 16:  # one launch, sweeps unrolled at compile time
            self._jacobi_run(src, x)
        else:
            bufs = (x, self._r)
            first = (self.iters + 1) % 2
            self._jacobi_first(src, bufs[first])
            for k in range(1, self.iters):
                self._jacobi_sweep(src, bufs[(first + k - 1) % 2], bufs[(first + k) % 2])
        self.iterations = self.iters
        self.residual = None  # computed on demand (costs a pass): see residual_of()

    def _cg(self, src, x):
        n = 1
        for s in self.grid.shape:
            n *= s
        mean = self._sum(src) / n if self.grid.singular else 0.0
        self._start_cg(src, x, mean)
        rr = self._dot(self._r, self._r)
        rmax = self._max_abs(self._r)
        k = 0
        while k < self.max_iters:
            if rmax <= self.tol:
                # The recursive residual drifts from the true one in f32: recompute it and
                # restart from the true residual unless that also meets the tolerance.
                rmax = self._true_residual(src, x, mean)
                if rmax <= self.tol:
                    break
                rr = self._dot(self._r, self._r)
            self._apply_a(self._d, self._q)
            alpha = rr / self._dot(self._d, self._q)
            rr_new = self._update_xr(x, alpha)
            rmax = self._rmax[None]
            self._update_d(rr_new / rr)
            rr = rr_new
            k += 1
        self.iterations, self.residual = k, rmax

    def residual_of(self, src=None, x=None) -> float:
        """max |src − A x| (defaults: the last forward solve)."""
        return self._residual_max(self.rhs if src is None else src, self.p if x is None else x)
