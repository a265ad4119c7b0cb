"""Optimizers that update Taichi fields in place with kernels, and learning-rate schedules.

``params`` is a field, or a list whose entries are a field, a ``(field, lr)`` pair or a
``{"params": field_or_list, "lr": lr}`` group (like torch's param groups); entries without
their own rate use ``lr`` (a number, or a list with one rate per entry). Fields need
``needs_grad=True``; :meth:`step` reads ``field.grad`` (fill it with ``ti.ad.Tape``),
:meth:`zero_grad` clears it. Before each update the parameters and gradients are checked
for NaN/inf (one reduction kernel each) and a :class:`UserError` names the culprit.

* :class:`SGD` — ``b ← μ b + g;  x ← x − η_t b`` (torch's SGD without dampening).
* :class:`Adam` — torch's Adam: ``m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
  x ← x − η_t (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)``. ``uniform=True`` replaces the
  per-entry denominator by its maximum over the whole parameter (Nicolet et al. 2021).
* :class:`LargeSteps` — vertex positions optimised in the differential parameterisation
  ``u = (I + λL) x`` of Nicolet et al. 2021, "Large Steps in Inverse Rendering of Geometry".

The rate at step t (0-based) is ``η_t = lr · schedule(t)``, with a schedule from
:class:`Constant`, :class:`ExponentialDecay`, :class:`CosineDecay`, :class:`StepDecay` or
any callable ``t -> factor``.
"""

import math

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import taichi as ti

from . import backend
from .errors import UserError
from .losses import mesh_topology, unique_edges

# --------------------------------------------------------------------------- schedules


class Constant:
    """Factor 1 at every step."""

    def __call__(self, step: int) -> float:
        return 1.0


class ExponentialDecay:
    """Factor ``gamma ** step``."""

    def __init__(self, gamma: float):
        if not 0 < gamma <= 1:
            raise UserError(f"exponential decay gamma is {gamma}; give 0 < gamma ≤ 1")
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        return self.gamma**step


class StepDecay:
    """Factor ``gamma ** (step // step_size)`` (torch's StepLR)."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        if int(step_size) < 1 or not 0 < gamma <= 1:
            raise UserError(
                f"step decay needs step_size ≥ 1 and 0 < gamma ≤ 1, got {step_size}, {gamma}"
            )
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)


class CosineDecay:
    """Factor ``min_factor + (1 − min_factor)(1 + cos(π t / total_steps)) / 2`` for
    t ≤ total_steps, then ``min_factor`` (torch's CosineAnnealingLR, one half period)."""

    def __init__(self, total_steps: int, min_factor: float = 0.0):
        if int(total_steps) < 1 or not 0 <= min_factor <= 1:
            raise UserError(
                f"cosine decay needs total_steps ≥ 1 and 0 ≤ min_factor ≤ 1, "
                f"got {total_steps}, {min_factor}"
            )
        self.total_steps, self.min_factor = int(total_steps), float(min_factor)

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))


# --------------------------------------------------------------------------- kernels


@ti.func
def _total(x, vector: ti.template()):
    if ti.static(vector):
        return x.sum()
    else:
        return x


@ti.kernel
def _count_nonfinite(x: ti.template(), out: ti.template(), big: float):
    for I in ti.grouped(x):
        finite = ti.abs(x[I]) <= big  # false for NaN and ±inf
        out[None] += _total(1 - finite, ti.static(isinstance(x, ti.MatrixField)))


@ti.kernel
def _sgd_update(x: ti.template(), buf: ti.template(), lr: float, momentum: float):
    for I in ti.grouped(x):
        buf[I] = momentum * buf[I] + x.grad[I]
        x[I] -= lr * buf[I]


@ti.kernel
def _adam_moments(
    x: ti.template(), m: ti.template(), v: ti.template(), b1: float, b2: float, vmax: ti.template()
):
    for I in ti.grouped(x):
        g = x.grad[I]
        m[I] = b1 * m[I] + (1 - b1) * g
        v[I] = b2 * v[I] + (1 - b2) * g * g
        if ti.static(isinstance(x, ti.MatrixField)):
            ti.atomic_max(vmax[None], v[I].max())
        else:
            ti.atomic_max(vmax[None], v[I])


@ti.kernel
def _adam_apply(
    x: ti.template(),
    m: ti.template(),
    v: ti.template(),
    step: float,
    c2: float,
    eps: float,
    uniform: ti.template(),
    vmax: ti.template(),
):
    for I in ti.grouped(x):
        if ti.static(uniform):
            x[I] -= step * m[I] / (ti.sqrt(vmax[None] / c2) + eps)
        else:
            x[I] -= step * m[I] / (ti.sqrt(v[I] / c2) + eps)


# --------------------------------------------------------------------------- optimizers


def _zeros_like(f):
    """A zero field with the shape, element type and dtype of ``f``."""
    if not isinstance(f, ti.MatrixField):
        return ti.field(f.dtype, shape=f.shape)
    if f.m == 1:
        return ti.Vector.field(f.n, f.dtype, shape=f.shape)
    return ti.Matrix.field(f.n, f.m, f.dtype, shape=f.shape)


def _check_lr(lr, where: str) -> float:
    try:
        value = float(lr)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"learning rate {lr!r} for {where} must be a finite number > 0")
    return value


def _param_groups(params, lr) -> list:
    """[(field, lr)] from the accepted forms of ``params`` (see the module docstring)."""
    entries = [params] if isinstance(params, (ti.ScalarField, ti.MatrixField)) else list(params)
    if not entries:
        raise UserError("the optimizer got no parameters; pass a list of fields")
    rates = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(entries)
    if len(rates) != len(entries):
        raise UserError(
            f"got {len(rates)} learning rates for {len(entries)} parameters; give one each"
        )
    out = []
    for k, (entry, rate) in enumerate(zip(entries, rates)):
        if isinstance(entry, dict):
            fields, rate = entry.get("params"), entry.get("lr", rate)
            fields = [fields] if not isinstance(fields, (list, tuple)) else fields
        elif isinstance(entry, tuple):
            fields, rate = [entry[0]], entry[1]
        else:
            fields = [entry]
        for f in fields:
            if not isinstance(f, (ti.ScalarField, ti.MatrixField)):
                raise UserError(
                    f"parameter {k} is a {type(f).__name__}, not a Taichi field; "
                    "pass fields allocated with needs_grad=True"
                )
            if not f.snode.ptr.has_adjoint():
                raise UserError(f"parameter {k} has no gradient; allocate it with needs_grad=True")
            if any(f is g for g, _ in out):
                raise UserError(f"parameter {k} is listed twice; list each field once")
            out.append((f, _check_lr(rate, f"parameter {k}")))
    return out


class _Optimizer:
    """Parameter groups, schedule, step counter, finite checks, zero_grad."""

    def __init__(self, params, lr, schedule, check_finite: bool):
        backend.ensure_init()
        self.groups = _param_groups(params, lr)
        self.schedule = Constant() if schedule is None else schedule
        if not callable(self.schedule):
            raise UserError("schedule must be callable: step -> learning-rate factor")
        self.check_finite = check_finite
        self.steps = 0
        self._bad = ti.field(ti.i32, shape=())
        self._big = float(np.finfo(backend.np_real()).max)

    def _nonfinite(self, f) -> int:
        self._bad[None] = 0
        _count_nonfinite(f, self._bad, self._big)
        return int(self._bad[None])

    def _check(self) -> None:
        for k, (f, _) in enumerate(self.groups):
            for what, g in (("values", f), ("gradient", f.grad)):
                n = self._nonfinite(g)
                if n:
                    raise UserError(
                        f"parameter {k} {what} has {n} NaN/inf entries at step {self.steps}; "
                        "lower the learning rate or fix the loss/initial values"
                    )

    def lr(self, k: int = 0) -> float:
        """Learning rate the next step uses for parameter ``k``."""
        return self.groups[k][1] * self.schedule(self.steps)

    def step(self) -> None:
        """Update every parameter from its ``.grad`` (in place)."""
        if self.check_finite:
            self._check()
        factor = float(self.schedule(self.steps))
        self.steps += 1
        for k, (f, rate) in enumerate(self.groups):
            self._update(k, f, rate * factor)

    def zero_grad(self) -> None:
        for f, _ in self.groups:
            f.grad.fill(0)


class SGD(_Optimizer):
    """Gradient descent with (heavy-ball) momentum μ ∈ [0, 1)."""

    def __init__(
        self, params, lr: float = 1e-2, momentum: float = 0.0, schedule=None, check_finite=True
    ):
        super().__init__(params, lr, schedule, check_finite)
        if not 0 <= momentum < 1:
            raise UserError(f"momentum is {momentum}; give 0 ≤ momentum < 1")
        self.momentum = float(momentum)
        self.buffers = [_zeros_like(f) for f, _ in self.groups]

    def _update(self, k, f, lr) -> None:
        _sgd_update(f, self.buffers[k], lr, self.momentum)


class Adam(_Optimizer):
    """Adam (torch's update and defaults); ``uniform=True``: Nicolet et al.'s variant whose
    second-moment denominator is the maximum over the whole parameter."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        schedule=None,
        uniform: bool = False,
        check_finite: bool = True,
    ):
        super().__init__(params, lr, schedule, check_finite)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise UserError(f"Adam betas are {tuple(betas)}; give two numbers in [0, 1)")
        if not eps > 0:
            raise UserError(f"Adam eps is {eps}; give a small number > 0 (e.g. 1e-8)")
        self.betas, self.eps, self.uniform = (b1, b2), float(eps), bool(uniform)
        self.moments = [(_zeros_like(f), _zeros_like(f)) for f, _ in self.groups]
        self._vmax = ti.field(backend.real(), shape=())

    def _update(self, k, f, lr) -> None:
        (b1, b2), t = self.betas, self.steps
        m, v = self.moments[k]
        self._vmax[None] = 0
        _adam_moments(f, m, v, b1, b2, self._vmax)
        step = lr / (1 - b1**t)
        _adam_apply(f, m, v, step, 1 - b2**t, self.eps, self.uniform, self._vmax)


# --------------------------------------------------------------------------- large steps


def uniform_laplacian(faces: np.ndarray, num_vertices: int) -> scipy.sparse.csr_matrix:
    """Combinatorial Laplacian L = D − A (V, V) of the mesh's edge graph."""
    e = unique_edges(np.asarray(faces, dtype=np.int64))
    ones = np.ones(len(e))
    A = scipy.sparse.coo_matrix(
        (np.r_[ones, ones], (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
        shape=(num_vertices, num_vertices),
    ).tocsr()
    return (scipy.sparse.diags(np.asarray(A.sum(axis=1)).ravel()) - A).tocsr()


class LargeSteps:
    """Optimise vertex ``positions`` (a (V,) 3-vector field with gradients) as
    ``u = (I + λL) x``, L the uniform Laplacian (Nicolet et al. 2021).

    :meth:`step` reads ``positions.grad`` (∂loss/∂x), maps it to ∂loss/∂u = (I + λL)⁻¹
    ∂loss/∂x (M is symmetric), takes an Adam step on u (``uniform=True`` by default, as the
    paper recommends) and writes ``x = (I + λL)⁻¹ u`` back into ``positions``. M is
    factorised once (SciPy sparse LU; topology is fixed); each step moves the used
    positions through NumPy once as whole arrays. Only the first ``num_vertices`` entries
    are touched. Positions changed from outside must be re-read with :meth:`reset`.
    """

    def __init__(
        self,
        positions,
        faces,
        num_vertices=None,
        num_faces=None,
        lam: float = 10.0,
        lr: float = 1e-2,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        schedule=None,
        uniform: bool = True,
        check_finite: bool = True,
    ):
        backend.ensure_init()
        V, f = mesh_topology(positions, faces, num_vertices, num_faces)
        if not (math.isfinite(lam) and lam > 0):
            raise UserError(f"large-steps lambda is {lam}; give a finite number > 0 (e.g. 10)")
        self.positions, self.num_vertices, self.lam = positions, V, float(lam)
        self.matrix = (scipy.sparse.identity(V) + self.lam * uniform_laplacian(f, V)).tocsc()
        self._lu = scipy.sparse.linalg.splu(self.matrix)
        self.u = ti.Vector.field(3, backend.real(), shape=V, needs_grad=True)
        self.adam = Adam(
            [self.u], lr, betas, eps, schedule, uniform=uniform, check_finite=check_finite
        )
        self.reset()

    def to_differential(self, x: np.ndarray) -> np.ndarray:
        """u = (I + λL) x for an (V, 3) array."""
        return self.matrix @ np.asarray(x, dtype=np.float64)

    def from_differential(self, u: np.ndarray) -> np.ndarray:
        """x = (I + λL)⁻¹ u for an (V, 3) array."""
        return self._lu.solve(np.asarray(u, dtype=np.float64))

    def reset(self) -> None:
        """Re-read u from the current positions (keeps the Adam state)."""
        x = self.positions.to_numpy()[: self.num_vertices]
        self.u.from_numpy(self.to_differential(x).astype(backend.np_real()))

    def lr(self) -> float:
        return self.adam.lr()

    def step(self) -> None:
        V = self.num_vertices
        g = self.positions.grad.to_numpy()[:V]
        if self.adam.check_finite and not np.all(np.isfinite(g)):
            raise UserError(
                f"positions gradient has {int((~np.isfinite(g)).sum())} NaN/inf entries at "
                f"step {self.adam.steps}; fix the loss or lower the learning rate"
            )
        self.u.grad.from_numpy(self.from_differential(g).astype(backend.np_real()))
        self.adam.step()
        x = self.positions.to_numpy()
        x[:V] = self.from_differential(self.u.to_numpy())
        self.positions.from_numpy(x)

    def zero_grad(self) -> None:
        self.positions.grad.fill(0)
        self.u.grad.fill(0)
