"""Differentiable smoke on a MAC grid (2D or 3D), with checkpointed reverse mode.

One step (slot ``s`` → ``s + 1``, step length ``dt`` in cell units):
  1. advect density and velocity by the velocity of slot ``s`` (semi-Lagrangian: an Euler
     backtrace and (bi/tri)linear sampling, as DiffTaichi; or MacCormack with a min/max
     limiter);
  2. add forces: buoyancy ``buoyancy · density`` along ``up_axis``, optional per-step control
     forces ``force[c][t]`` (differentiable) and a constant density ``source``;
  3. project: ``rhs = −div``, ``p = S(rhs)`` (:class:`PressureSolver`), ``u −= ∇p``.

Memory: states live in a ring of ``k + 1`` slots (``k = checkpoint``). The forward pass keeps
the state at the start of every segment of ``k`` steps (on the host); the backward pass replays
each segment from its checkpoint and runs the kernels' adjoints step by step in reverse. With
``k ≈ √T`` memory is O(√T) states instead of O(T); ``checkpoint >= steps`` is a plain full tape.

Parameters (``init_density``, ``init_velocity[c]``, ``force[c]``) and outputs
(``out_density``, ``out_velocity[c]``) are fields with gradients. ``run()`` works inside
``ti.ad.Tape`` (its gradient is :meth:`backward`); or call :meth:`forward`, set the output
gradients and call :meth:`backward` — parameter gradients are *accumulated*.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .grid import MacGrid, accumulate, check_shape
from .pressure import PressureSolver

ADVECTION = ("semi-lagrangian", "maccormack")
# A step whose CFL number needs more substeps than this is refused (the work would be
# unbounded: dt = 1e6 asked for 25,001 substeps per step).
MAX_SUBSTEPS = 64


@dataclass(frozen=True)
class SmokeConfig:
    """Settings of a :class:`Smoke` simulation (lengths in cells, ``dt`` in time units)."""

    shape: tuple = (64, 64)
    steps: int = 100
    dt: float = 1.0
    boundary: object = "closed"  # see grid.parse_boundary
    advection: str = "semi-lagrangian"
    solver: str = "cg"
    jacobi_iters: int = 10
    cg_tol: float = 1e-5
    cg_max_iters: int = 0  # 0: 20 × the longest side
    buoyancy: float = 0.0  # upward acceleration per unit density (cells / time²)
    up_axis: int = 1
    cfl_limit: float = 4.0  # larger CFL (dt · max speed) on the initial state → substeps
    checkpoint: int = 0  # segment length k; 0: ceil(√steps); ≥ steps: full tape
    controls: bool = False  # allocate per-step control forces


def dt_for_cfl(cfl: float, max_speed: float) -> float:
    """Time step moving the fastest fluid ``cfl`` cells per step."""
    if not cfl > 0 or not max_speed > 0:
        raise UserError(f"need cfl > 0 and max_speed > 0, got {cfl}, {max_speed}")
    return cfl / max_speed


def image_to_grid(image: np.ndarray) -> np.ndarray:
    """(H, W) image (row 0 at the top) → (W, H) cell array indexed [x, y] with y up."""
    return np.ascontiguousarray(np.flipud(np.asarray(image)).T)


def grid_to_image(cells: np.ndarray) -> np.ndarray:
    """Inverse of :func:`image_to_grid`."""
    return np.ascontiguousarray(np.flipud(np.asarray(cells).T))


def _check_config(cfg: SmokeConfig) -> None:
    if not (isinstance(cfg.steps, int) and cfg.steps >= 1):
        raise UserError(f"steps must be a positive integer, got {cfg.steps!r}")
    if not (math.isfinite(cfg.dt) and cfg.dt > 0):
        raise UserError(f"dt must be a positive number, got {cfg.dt}")
    if cfg.advection not in ADVECTION:
        raise UserError(f"unknown advection {cfg.advection!r}; choose {' or '.join(ADVECTION)}")
    if not 0 <= cfg.up_axis < len(cfg.shape):
        raise UserError(f"up_axis must be an axis of the grid, got {cfg.up_axis}")
    if not cfg.cfl_limit > 0:
        raise UserError(f"cfl_limit must be positive, got {cfg.cfl_limit}")
    if cfg.checkpoint < 0:
        raise UserError(f"checkpoint must be ≥ 0 (0 = automatic), got {cfg.checkpoint}")


@ti.data_oriented
class Smoke:
    """A differentiable smoke simulation; see the module docstring."""

    def __init__(self, config: SmokeConfig):
        _check_config(config)
        self.cfg = cfg = config
        dim = len(cfg.shape)
        k = cfg.checkpoint or math.ceil(math.sqrt(cfg.steps))
        self.k = min(k, cfg.steps)
        mc = cfg.advection == "maccormack"
        per_cell = (self.k + 1) * (dim + 1) * (3 if mc else 1) + 4 * dim + 14
        per_cell += cfg.steps * dim if cfg.controls else 0
        bytes_ = 4 if backend.real() == ti.f32 else 8
        self.grid = grid = MacGrid(check_shape(cfg.shape, 2 * bytes_ * per_cell), cfg.boundary)
        self.dim, self.shape = dim, grid.shape
        self.solver = PressureSolver(
            grid, cfg.solver, cfg.jacobi_iters, cfg.cg_tol, cfg.cg_max_iters
        )
        real, slots = backend.real(), self.k + 1

        def field(shape):
            return ti.field(real, shape, needs_grad=True)

        faces = [grid.face_shape(c) for c in range(dim)]
        self.density = field((slots, *self.shape))
        self.velocity = [field((slots, *f)) for f in faces]
        self.init_density = field(self.shape)
        self.init_velocity = [field(f) for f in faces]
        self.out_density = field(self.shape)
        self.out_velocity = [field(f) for f in faces]
        self._vel_adv = [field((1, *f)) for f in faces]  # advected velocity (scratch)
        self._vel_grad = [v.grad for v in self.velocity]
        self.force = [field((cfg.steps, *f)) for f in faces] if cfg.controls else None
        self.source = ti.field(real, self.shape)
        self._has_source = False
        # MacCormack intermediates per slot: forward (hat) and back-and-forth (tilde) results.
        self._mc = None
        if mc:
            self._mc = [(field((slots, *s)), field((slots, *s))) for s in [self.shape, *faces]]
        # Float atomics are compare-and-swap loops on CPUs (slower than one thread of plain
        # adds): there the advection adjoint scatters slab by slab instead (_advect_all_grad).
        self._slab_scatter = backend.current_arch() == "cpu"
        self._max_slabs = 2 * ti.lang.impl.current_cfg().cpu_max_num_threads
        self.substeps, self.micro_steps = 1, cfg.steps
        self._checkpoints = []
        self.solver_iterations = []

    # ---- inputs and outputs ----------------------------------------------------------------
    def set_initial(self, density=None, velocity=None, source=None):
        """Set the initial density (cells), velocity (one face array per component) and a
        constant density source (cells, added every step × dt)."""
        if density is not None:
            self.init_density.from_numpy(self._as(density, self.shape, "density"))
        if velocity is not None:
            if len(velocity) != self.dim:
                raise UserError(f"velocity needs {self.dim} face arrays, got {len(velocity)}")
            for c, (f, v) in enumerate(zip(self.init_velocity, velocity)):
                f.from_numpy(self._as(v, f.shape, f"velocity[{c}]"))
        if source is not None:
            self.source.from_numpy(self._as(source, self.shape, "source"))
            self._has_source = bool(np.any(np.asarray(source) != 0))

    def _as(self, a, shape, name):
        a = np.asarray(a, dtype=backend.np_real())
        if a.shape != tuple(shape):
            raise UserError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise UserError(f"{name} contains NaN or inf")
        return a

    def slot_density(self, s: int) -> np.ndarray:
        """Density of ring slot ``s`` as a NumPy (cells) array."""
        return self._slot_array(self.density, s)

    def _slot_array(self, f, s):
        out = np.zeros(f.shape[1:], dtype=backend.np_real())
        self._slot_to_array(f, s, out)
        return out

    # ---- the step ------------------------------------------------------------------------
    def _ops(self, s: int, t: int):
        """The step from slot s (control index t) as (forward, backward, args) triples."""
        dt = self.cfg.dt / self.substeps
        calls = []
        if self._mc is None:
            ops = [(self._advect_all, self._advect_all_grad, (s, dt))]
        else:
            quantities = [(self.density, -1, self.density, s + 1)]
            quantities += [(v, c, self._vel_adv[c], 0) for c, v in enumerate(self.velocity)]
            for (src, c, dst, ds), (hat, tilde) in zip(quantities, self._mc):
                calls.append((self._advect, (src, c, s, hat, s, dt)))
                calls.append((self._advect, (hat, c, s, tilde, s, -dt)))
                calls.append((self._maccormack, (src, c, s, dst, ds, hat, tilde, dt)))
            ops = []
        if self._has_source:
            calls.append((self._add_source, (s, dt)))
        if self.cfg.buoyancy != 0 or self.force is not None:
            calls += [(self._add_forces, (c, s, t, dt)) for c in range(self.dim)]
        ops += [(k, k.grad, args) for k, args in calls]
        ops.append((self._projection, self._projection_adjoint, (s,)))
        return ops

    def _step(self, s, t):
        for fn, _, args in self._ops(s, t):
            fn(*args)

    def _step_grad(self, s, t):
        for _, grad, args in reversed(self._ops(s, t)):
            grad(*args)

    def _projection(self, s):
        """velocity[s + 1] = P(_vel_adv): remove the divergence (rhs = −div, p = S(rhs),
        subtract ∇p). With the wall mask M, P = M (I + G S D) M."""
        self._divergence(False, s)
        self.solver.forward()
        self._project(False, s)

    def _projection_adjoint(self, s):
        """_vel_adv.grad = P(velocity.grad[s + 1]), consuming velocity.grad[s + 1]: P is
        self-adjoint (D^T = −G, S is symmetric, M diagonal), so its adjoint is the same
        divergence, solve (on rhs.grad → p.grad) and gradient subtraction."""
        self._divergence(True, s)
        self.solver.solve(self.solver.rhs.grad, self.solver.p.grad)
        self._project(True, s)

    # ---- rollout -------------------------------------------------------------------------
    def forward(self, on_step=None):
        """Run all steps from the initial fields; write the final state to ``out_*``.
        ``on_step(step, slot)`` is called after every step (for frames, not under AD)."""
        self.substeps = self._substeps()
        T, k = self.cfg.steps * self.substeps, self.k
        self.micro_steps = T
        self._checkpoints = []
        self.solver_iterations = []
        self._load_initial()
        for m in range(T):
            s = m % k
            if s == 0 and m > 0:
                self._check_finite(k, m - k)
                self._shift_ring(k)
                self._checkpoints.append([self._slot_array(f, 0) for f in self._state()])
            self._step(s, m // self.substeps)
            self.solver_iterations.append(self.solver.iterations)
            if on_step is not None and (m + 1) % self.substeps == 0:
                on_step((m + 1) // self.substeps, s + 1)
        last = (T - 1) % k + 1
        self._check_finite(last, T - last)
        self._store_output(last)

    def backward(self):
        """Accumulate d(loss)/d(parameters) given the gradients set on ``out_*``."""
        T, k = self.micro_steps, self.k
        n_seg = -(-T // k)
        self._zero_ring_grads()
        self._store_output.grad((T - 1) % k + 1)
        for j in reversed(range(n_seg)):
            m0, count = j * k, min(k, T - j * k)
            if j != n_seg - 1:  # the last segment is still in the ring after forward()
                self._restore(j)
                # The adjoint of a step reads the state it starts from (and MacCormack's
                # intermediates, which that step computes), never the state it produces.
                for i in range(count if self._mc else count - 1):
                    self._step(i, (m0 + i) // self.substeps)
            for i in reversed(range(count)):
                self._step_grad(i, (m0 + i) // self.substeps)
            if j > 0:
                self._carry_grads(k)
        self._load_initial.grad()

    @ti.ad.grad_replaced
    def run(self):
        """:meth:`forward`, recorded by an enclosing ``ti.ad.Tape`` with :meth:`backward`
        as its gradient."""
        self.forward()

    @ti.ad.grad_for(run)
    def _run_grad(self):
        self.backward()

    def zero_grad(self):
        for f in [self.init_density, *self.init_velocity, *(self.force or [])]:
            f.grad.fill(0)

    def max_divergence(self, s=None) -> float:
        """max |div u| of ring slot ``s`` (default: the final state)."""
        return self._max_div((self.micro_steps - 1) % self.k + 1 if s is None else s)

    def field_bytes(self) -> int:
        """Bytes of all Taichi fields of this simulation (values and gradients)."""
        fields = [self.density, *self.velocity, self.init_density, *self.init_velocity]
        fields += [self.out_density, *self.out_velocity, *self._vel_adv, *(self.force or [])]
        fields += [x for pair in (self._mc or []) for x in pair]
        n = sum(int(np.prod(f.shape)) for f in fields) * 2 + 8 * int(np.prod(self.shape))
        return n * (4 if backend.real() == ti.f32 else 8)

    # ---- helpers (Python) -------------------------------------------------------------------
    def _state(self):
        return [self.density, *self.velocity]

    def _substeps(self) -> int:
        cfl = self._max_speed() * self.cfg.dt
        if not math.isfinite(cfl):
            raise UserError("the initial velocity contains NaN/inf; check the inputs")
        if cfl <= self.cfg.cfl_limit:
            return 1
        n = math.ceil(cfl / self.cfg.cfl_limit)
        if n > MAX_SUBSTEPS:
            raise UserError(
                f"dt = {self.cfg.dt:g} moves the fastest smoke {cfl:.3g} cells per step: that "
                f"needs {n:.3g} substeps per step, more than {MAX_SUBSTEPS}; lower dt to at most "
                f"{MAX_SUBSTEPS * self.cfg.cfl_limit / self._max_speed():.3g} (or the learning "
                "rate, if the optimisation made the flow this fast)"
            )
        warnings.warn(
            f"CFL number {cfl:.2f} exceeds the limit {self.cfg.cfl_limit}: taking {n} substeps "
            "per step (lower dt to avoid this)",
            stacklevel=3,
        )
        return n

    def _restore(self, j):
        if j == 0:
            self._load_initial()
        else:
            for f, a in zip(self._state(), self._checkpoints[j - 1]):
                self._array_to_slot(a, f, 0)

    def _zero_ring_grads(self):
        for f in [*self._state(), *(x for pair in (self._mc or []) for x in pair)]:
            f.grad.fill(0)

    def _carry_grads(self, k):
        self._move_grads(k)
        for pair in self._mc or []:
            for f in pair:
                f.grad.fill(0)

    def _check_finite(self, upto, m0):
        bad = self._first_nonfinite(upto)
        if bad <= upto:
            step = (m0 + bad - 1) // self.substeps + 1
            raise UserError(
                f"the smoke state became NaN/inf at step {step} of {self.cfg.steps}; "
                "lower dt, the forces or the learning rate"
            )

    # ---- Taichi functions --------------------------------------------------------------------
    @ti.func
    def _vel_at_point(self, s, I, c: ti.template()):
        """Velocity of slot s at lattice point I of field c (-1: cell centres, else faces
        of component c): the stored value for component c, else the average of the 2 or 4
        nearest faces."""
        return ti.Vector(
            [self._vel_component(s, I, c, a, 0.0, False, False) for a in ti.static(range(self.dim))]
        )

    @ti.func
    def _backtrace(self, s, I, c: ti.template(), dt):
        """Departure point of lattice point I of field c (cells) after dt along slot s."""
        return I + ti.Vector(ti.static(self.grid.offset(c))) - dt * self._vel_at_point(s, I, c)

    @ti.func
    def _advect_point_adjoint(self, c: ti.template(), s, I, dt, atomic: ti.template()):
        """Adjoint of :meth:`_advect_all` at lattice point I of field c (-1: density):
        consumes the output gradient there (an overwritten value) and scatters it into the
        gradients of slot s (atomically, or with plain adds)."""
        if ti.static(c < 0):
            g = self.density.grad[s + 1, I]
            self.density.grad[s + 1, I] = 0.0
            self._advect_adjoint(self.density, c, s, I, dt, g, atomic)
        else:
            g = self._vel_adv[c].grad[0, I]
            self._vel_adv[c].grad[0, I] = 0.0
            self._advect_adjoint(self.velocity[c], c, s, I, dt, g, atomic)

    @ti.func
    def _advect_adjoint(
        self, src: ti.template(), c: ti.template(), s, I, dt, g, atomic: ti.template()
    ):
        """Adjoint of ``sample(src, s, _backtrace(s, I, c, dt), c)`` for output gradient g:
        scatters into ``src.grad`` and ``velocity[·].grad`` of slot s."""
        dpos = self.grid.sample_adjoint(src, s, self._backtrace(s, I, c, dt), c, g, atomic)
        for a in ti.static(range(self.dim)):
            self._vel_component(s, I, c, a, -dt * dpos[a], True, atomic)

    @ti.func
    def _vel_component(
        self,
        s,
        I,
        c: ti.template(),
        a: ti.template(),
        g,
        adjoint: ti.template(),
        atomic: ti.template(),
    ):
        """Component a of :meth:`_vel_at_point`; with ``adjoint`` also adds its adjoint for
        output gradient ``g`` to ``velocity[a].grad`` (atomically, or with plain adds)."""
        v = 0.0
        e = ti.Vector.unit(self.dim, a, ti.i32)
        if ti.static(a == c):
            v = self._tap(a, s, I, 1.0, g, adjoint, atomic)
        elif ti.static(c < 0):
            v = self._tap(a, s, I, 0.5, g, adjoint, atomic)
            v += self._tap(a, s, self.grid.wrap(I + e, a), 0.5, g, adjoint, atomic)
        else:
            ec = ti.Vector.unit(self.dim, c, ti.i32)
            lo, hi = self._cell_clamped(I - ec, c), self._cell_clamped(I, c)
            v = self._tap(a, s, lo, 0.25, g, adjoint, atomic)
            v += self._tap(a, s, self.grid.wrap(lo + e, a), 0.25, g, adjoint, atomic)
            v += self._tap(a, s, hi, 0.25, g, adjoint, atomic)
            v += self._tap(a, s, self.grid.wrap(hi + e, a), 0.25, g, adjoint, atomic)
        return v

    @ti.func
    def _tap(self, a: ti.template(), s, J, w, g, adjoint: ti.template(), atomic: ti.template()):
        if ti.static(adjoint):
            accumulate(self.velocity[a].grad, s, J, w * g, atomic)
        return w * self.velocity[a][s, J]

    @ti.func
    def _cell_clamped(self, I, a: ti.template()):
        J = self.grid.wrap(I, a)
        J[a] = ti.math.clamp(J[a], 0, self.shape[a] - 1)
        return J

    @ti.func
    def _div_at(self, v: ti.template(), s, I):
        div = 0.0
        for a in ti.static(range(self.dim)):
            e = ti.Vector.unit(self.dim, a, ti.i32)
            hi = I + e
            if ti.static(self.grid.periodic[a]):
                hi = self.grid.wrap(hi, a)
            div += ti.select(self.grid.is_wall(a, hi), 0.0, v[a][s, hi])
            div -= ti.select(self.grid.is_wall(a, I), 0.0, v[a][s, I])
        return div

    # ---- kernels (differentiable) ----------------------------------------------------------
    @ti.kernel
    def _load_initial(self):
        for I in ti.grouped(self.init_density):
            self.density[0, I] = self.init_density[I]
        for c in ti.static(range(self.dim)):
            for I in ti.grouped(self.init_velocity[c]):
                self.velocity[c][0, I] = self.init_velocity[c][I]

    @ti.kernel
    def _store_output(self, s: ti.i32):
        for I in ti.grouped(self.out_density):
            self.out_density[I] = self.density[s, I]
        for c in ti.static(range(self.dim)):
            for I in ti.grouped(self.out_velocity[c]):
                self.out_velocity[c][I] = self.velocity[c][s, I]

    @ti.kernel
    def _advect(
        self,
        src: ti.template(),
        c: ti.template(),
        s: ti.i32,
        dst: ti.template(),
        ds: ti.i32,
        dt: float,
    ):
        """dst[ds] = src[s] sampled at each point traced back by dt along velocity slot s."""
        for I in ti.grouped(ti.ndrange(*(dst.shape[1:]))):
            dst[ds, I] = self.grid.sample(src, s, self._backtrace(s, I, c, dt), c)

    @ti.kernel
    def _advect_all(self, s: ti.i32, dt: float):
        """Semi-Lagrangian step of density (slot s → s + 1) and velocity (→ _vel_adv)."""
        for I in ti.grouped(self.init_density):
            self.density[s + 1, I] = self.grid.sample(
                self.density, s, self._backtrace(s, I, -1, dt), -1
            )
        for c in ti.static(range(self.dim)):
            for I in ti.grouped(self.init_velocity[c]):
                self._vel_adv[c][0, I] = self.grid.sample(
                    self.velocity[c], s, self._backtrace(s, I, c, dt), c
                )

    def _advect_all_grad(self, s, dt):
        """Hand-written adjoint of :meth:`_advect_all`: a scatter, with atomics on GPUs; on
        CPUs without them, over slabs along axis 0 (:meth:`_scatter_slabs`)."""
        slabs = self._scatter_slabs(s, dt) if self._slab_scatter else 0
        self._advect_all_adjoint(s, dt, slabs)

    def _scatter_slabs(self, s, dt) -> int:
        """How many slabs along axis 0 the CPU adjoint scatter of step s can use (even, at
        most 2 × threads, or 1 = serial): the scatter of a source point reaches at most
        ``reach`` cells along axis 0 (its backtrace, one cell of interpolation stencil and
        one of velocity averaging), so slabs at least 2 × reach thick that are two apart
        write disjoint cells and the even ones, then the odd ones, run in parallel."""
        reach = math.ceil(dt * self._max_abs(self.velocity[0], s)) + 2
        slabs = min(self._max_slabs, self.shape[0] // (2 * reach))
        return max(1, slabs - slabs % 2)

    @ti.kernel
    def _advect_all_adjoint(self, s: ti.i32, dt: float, slabs: ti.i32):
        """The scatter of :meth:`_advect_all_grad`: per point with atomics (slabs = 0) or
        per slab with plain adds, the even slabs in parallel, then the odd ones."""
        if ti.static(not self._slab_scatter):
            for I in ti.grouped(ti.ndrange(*self.shape)):
                self._advect_point_adjoint(-1, s, I, dt, True)
            for c in ti.static(range(self.dim)):
                for I in ti.grouped(ti.ndrange(*ti.static(self.grid.face_shape(c)))):
                    self._advect_point_adjoint(c, s, I, dt, True)
        else:
            # Taichi's CPU range-for gives each thread at least 512 consecutive iterations:
            # one slab per 512 iterations spreads the slabs over the threads.
            n, stride = ti.static(self.shape[0], 512)
            for parity in ti.static(range(2)):
                for u in range((slabs + 1 - parity) // 2 * stride):
                    if u % stride == 0:
                        j = 2 * (u // stride) + parity
                        self._slab_adjoint(
                            s, dt, j * n // slabs, (j + 1) * n // slabs, j == slabs - 1
                        )

    @ti.func
    def _slab_adjoint(self, s, dt, lo, hi, last):
        """Serial adjoint scatter of the points with axis-0 index in [lo, hi) (``last``: up
        to the end, including the top faces of a closed axis 0)."""
        for c in ti.static(range(-1, self.dim)):
            extent = ti.static(self.shape if c < 0 else self.grid.face_shape(c))
            top = ti.select(last, extent[0], hi)
            for I in ti.grouped(ti.ndrange((lo, top), *extent[1:])):
                self._advect_point_adjoint(c, s, I, dt, False)

    @ti.kernel
    def _maccormack(
        self,
        src: ti.template(),
        c: ti.template(),
        s: ti.i32,
        dst: ti.template(),
        ds: ti.i32,
        hat: ti.template(),
        tilde: ti.template(),
        dt: float,
    ):
        """dst = hat + (src − tilde) / 2, falling back to hat outside the range of the
        samples hat was interpolated from (Selle et al. 2008)."""
        for I in ti.grouped(ti.ndrange(*(dst.shape[1:]))):
            lo, hi = self.grid.sample_range(src, s, self._backtrace(s, I, c, dt), c)
            x = hat[s, I] + 0.5 * (src[s, I] - tilde[s, I])
            dst[ds, I] = ti.select((x < lo) | (x > hi), hat[s, I], x)

    @ti.kernel
    def _add_source(self, s: ti.i32, dt: float):
        for I in ti.grouped(self.source):
            self.density[s + 1, I] += dt * self.source[I]

    @ti.kernel
    def _add_forces(self, c: ti.template(), s: ti.i32, t: ti.i32, dt: float):
        for I in ti.grouped(ti.ndrange(*ti.static(self.grid.face_shape(c)))):
            f = 0.0
            if ti.static(c == self.cfg.up_axis and self.cfg.buoyancy != 0):
                e = ti.Vector.unit(self.dim, c, ti.i32)
                d = self.density[s + 1, self._cell_clamped(I - e, c)]
                d += self.density[s + 1, self._cell_clamped(I, c)]
                f += 0.5 * self.cfg.buoyancy * d
            if ti.static(self.cfg.controls):
                f += self.force[c][t, I]
            self._vel_adv[c][0, I] += dt * f

    @ti.kernel
    def _divergence(self, adjoint: ti.template(), s: ti.i32):
        """rhs = −div _vel_adv; adjoint: rhs.grad = −div velocity.grad[s + 1]."""
        for I in ti.grouped(self.solver.rhs):
            if ti.static(adjoint):
                self.solver.rhs.grad[I] = -self._div_at(self._vel_grad, s + 1, I)
            else:
                self.solver.rhs[I] = -self._div_at(self._vel_adv, 0, I)

    @ti.kernel
    def _project(self, adjoint: ti.template(), s: ti.i32):
        """velocity[s + 1] = _vel_adv − ∇p (0 on closed walls); adjoint: _vel_adv.grad =
        velocity.grad[s + 1] − ∇p.grad (0 on walls), zeroing velocity.grad[s + 1]."""
        p = ti.static((self.solver.p, self.solver.p.grad)[adjoint])
        for c in ti.static(range(self.dim)):
            for I in ti.grouped(self.init_velocity[c]):
                e = ti.Vector.unit(self.dim, c, ti.i32)
                lo, hi = self.grid.wrap(I - e, c), self.grid.wrap(I, c)
                p_lo = ti.select(self.grid.inside(lo, c), p[self._cell_clamped(lo, c)], 0.0)
                p_hi = ti.select(self.grid.inside(hi, c), p[self._cell_clamped(hi, c)], 0.0)
                wall = self.grid.is_wall(c, I)
                if ti.static(adjoint):
                    u = self.velocity[c].grad[s + 1, I] - (p_hi - p_lo)
                    self.velocity[c].grad[s + 1, I] = 0.0
                    self._vel_adv[c].grad[0, I] = ti.select(wall, 0.0, u)
                else:
                    u = self._vel_adv[c][0, I] - (p_hi - p_lo)
                    self.velocity[c][s + 1, I] = ti.select(wall, 0.0, u)

    # ---- kernels (bookkeeping) --------------------------------------------------------------
    @ti.kernel
    def _max_abs(self, f: ti.template(), s: ti.i32) -> ti.f64:
        """max |f[s, ·]|."""
        m = 0.0
        for I in ti.grouped(ti.ndrange(*f.shape[1:])):
            ti.atomic_max(m, ti.abs(f[s, I]))
        return m

    @ti.kernel
    def _max_speed(self) -> ti.f64:
        m = 0.0
        for c in ti.static(range(self.dim)):
            for I in ti.grouped(self.init_velocity[c]):
                ti.atomic_max(m, ti.abs(self.init_velocity[c][I]))
        return m

    @ti.kernel
    def _max_div(self, s: ti.i32) -> ti.f64:
        m = 0.0
        for I in ti.grouped(self.out_density):
            ti.atomic_max(m, ti.abs(self._div_at(self.velocity, s, I)))
        return m

    @ti.kernel
    def _first_nonfinite(self, upto: ti.i32) -> ti.i32:
        """Smallest ring slot ≤ upto holding a NaN/inf in the state (upto + 1 if none)."""
        first = upto + 1
        for f in ti.static(self._state()):
            for I in ti.grouped(ti.ndrange(upto + 1, *f.shape[1:])):
                if not ti.abs(f[I]) < 1e30:
                    ti.atomic_min(first, I[0])
        return first

    @ti.kernel
    def _shift_ring(self, k: ti.i32):
        for I in ti.grouped(self.init_density):
            self.density[0, I] = self.density[k, I]
        for c in ti.static(range(self.dim)):
            for I in ti.grouped(self.init_velocity[c]):
                self.velocity[c][0, I] = self.velocity[c][k, I]

    @ti.kernel
    def _move_grads(self, k: ti.i32):
        """State gradients: slot 0 → slot k, then slots 0 … k − 1 zeroed."""
        for f in ti.static(self._state()):
            for I in ti.grouped(ti.ndrange(*f.shape[1:])):
                f.grad[k, I] = f.grad[0, I]
            for I in ti.grouped(ti.ndrange(k, *f.shape[1:])):
                f.grad[I] = 0.0

    @ti.kernel
    def _slot_to_array(self, f: ti.template(), s: ti.i32, a: ti.types.ndarray()):
        for I in ti.grouped(ti.ndrange(*f.shape[1:])):  # static bounds: ~5x faster
            a[I] = f[s, I]

    @ti.kernel
    def _array_to_slot(self, a: ti.types.ndarray(), f: ti.template(), s: ti.i32):
        for I in ti.grouped(ti.ndrange(*f.shape[1:])):
            f[s, I] = a[I]
