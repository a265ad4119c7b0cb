"""Optimizers that update Taichi ndarrays or fields in place with kernels, and
learning-rate schedules.

``params`` is a parameter, or a list whose entries are a parameter, a ``(param, lr)`` pair
or a ``{"params": param_or_list, "lr": lr, "name": name}`` group (like torch's param
groups; ``lr`` and ``name`` optional); entries without their own rate use ``lr`` (a
number, or a list with one rate per entry). A parameter is a Taichi ndarray
(``needs_grad=True``; the renderer's arrays) or a Taichi field (``needs_grad=True``).
:meth:`step` reads its gradient (``.grad``, filled by ``ti.ad.Tape`` or ``kernel.grad``),
:meth:`zero_grad` clears it — ndarray gradients accumulate over Tapes, so call it before
each one. Before each update the parameters and gradients are checked for NaN/inf (one
reduction kernel per parameter) and a :class:`UserError` names the culprit.

* :class:`SGD` — ``b ← μ b + g;  x ← x − η_t b`` (torch's SGD without dampening).
* :class:`Adam` — torch's Adam: ``m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
  x ← x − η_t (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)``. ``uniform=True`` replaces the
  per-entry denominator by its maximum over the whole parameter (Nicolet et al. 2021).
* :class:`LargeSteps` — vertex positions optimised in the differential parameterisation
  ``u = (I + λL) x`` of Nicolet et al. 2021, "Large Steps in Inverse Rendering of Geometry".

The rate at step t (0-based) is ``η_t = lr · schedule(t)``, with a schedule from
:class:`Constant`, :class:`ExponentialDecay`, :class:`CosineDecay`, :class:`StepDecay` or
any callable ``t -> factor``.

Every optimizer's state (for checkpoints) is ``state_dict()``: a flat dict of NumPy
arrays, ``"steps"`` (0-d) and per parameter k its buffers ``"m/k"``, ``"v/k"`` (Adam),
``"buffer/k"`` (SGD), plus ``"u"`` for LargeSteps; ``load_state_dict`` checks and
restores it. The kernels compile once per parameter layout (ndarrays of any size share
them; fields compile per field, as Taichi does for ``ti.template()`` arguments).
"""

import math

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import taichi as ti

from . import backend
from .errors import UserError
from .losses import mesh_topology, unique_edges
from .render import arrays

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


# --------------------------------------------------------------------------- update math

# Each update exists once, as a ti.func on one entry (a scalar or a vector), and is run by
# two thin kernels with the same flat loop over the n entries (see arrays.unravel): one
# over ndarrays (compiled once per layout) and one over fields (compiled per field).
Array = ti.types.ndarray()
Counts = ti.types.vector(2, ti.i32)  # NaN/inf entries of a parameter and of its gradient


@ti.func
def _total(x, vector: ti.template()):
    if ti.static(vector):
        return x.sum()
    else:
        return x


@ti.func
def _largest(x, vector: ti.template()):
    if ti.static(vector):
        return x.max()
    else:
        return x


@ti.func
def _nonfinite(x, big, vector: ti.template()):
    """Number of NaN/±inf components of entry ``x``."""
    finite = ti.abs(x) <= big  # false for NaN and ±inf
    return _total(1 - finite, vector)


@ti.func
def _sgd(x, g, b, lr, momentum):
    b = momentum * b + g
    return x - lr * b, b


@ti.func
def _adam_moments(g, m, v, b1, b2):
    return b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g


@ti.func
def _adam_update(x, m, v, step, c2, eps):
    """``x − step · m / (sqrt(v / c2) + eps)``; ``v`` is the entry's own second moment or
    (uniform Adam) the parameter's largest."""
    return x - step * m / (ti.sqrt(v / c2) + eps)


# Adam's passes: "both" (moments and update in one pass), "moments" (returns the largest
# second moment: uniform Adam's first pass), "update" (with that maximum: its second pass).


@ti.func
def _adam_entry(
    x, g, m, v, b1, b2, step, c2, eps, vmax, stage: ti.template(), vector: ti.template()
):
    """One entry's Adam pass: (new x, new m, new v, largest component of the new v)."""
    largest = 0.0
    if ti.static(stage != "update"):
        m, v = _adam_moments(g, m, v, b1, b2)
        largest = _largest(v, vector)
    if ti.static(stage == "both"):
        x = _adam_update(x, m, v, step, c2, eps)
    if ti.static(stage == "update"):
        x = _adam_update(x, m, vmax, step, c2, eps)
    return x, m, v, largest


@ti.kernel
def _nonfinite_arrays(x: Array, g: Array, n: ti.i32, big: float, vector: ti.template()) -> Counts:
    bad_x, bad_g = 0, 0
    for i in range(n):
        I = arrays.unravel(i, x)
        bad_x += _nonfinite(x[I], big, vector)
        bad_g += _nonfinite(g[I], big, vector)
    return ti.Vector([bad_x, bad_g])


@ti.kernel
def _nonfinite_fields(
    x: ti.template(), g: ti.template(), n: ti.i32, big: float, vector: ti.template()
) -> Counts:
    bad_x, bad_g = 0, 0
    for i in range(n):
        I = arrays.unravel(i, x)
        bad_x += _nonfinite(x[I], big, vector)
        bad_g += _nonfinite(g[I], big, vector)
    return ti.Vector([bad_x, bad_g])


@ti.kernel
def _zero(a: Array, n: ti.i32):
    for i in range(n):
        a[arrays.unravel(i, a)] = 0  # a store: NaN entries become 0 too


@ti.kernel
def _sgd_arrays(x: Array, g: Array, b: Array, n: ti.i32, lr: float, momentum: float):
    for i in range(n):
        I = arrays.unravel(i, x)
        x[I], b[I] = _sgd(x[I], g[I], b[I], lr, momentum)


@ti.kernel
def _sgd_fields(
    x: ti.template(), g: ti.template(), b: ti.template(), n: ti.i32, lr: float, momentum: float
):
    for i in range(n):
        I = arrays.unravel(i, x)
        x[I], b[I] = _sgd(x[I], g[I], b[I], lr, momentum)


@ti.kernel
def _adam_arrays(
    x: Array,
    g: Array,
    m: Array,
    v: Array,
    n: ti.i32,
    b1: float,
    b2: float,
    step: float,
    c2: float,
    eps: float,
    vmax: float,
    stage: ti.template(),
    vector: ti.template(),
) -> float:
    largest = 0.0
    for i in range(n):
        I = arrays.unravel(i, x)
        x[I], m[I], v[I], top = _adam_entry(
            x[I], g[I], m[I], v[I], b1, b2, step, c2, eps, vmax, stage, vector
        )
        if ti.static(stage == "moments"):
            ti.atomic_max(largest, top)
    return largest


@ti.kernel
def _adam_fields(
    x: ti.template(),
    g: ti.template(),
    m: ti.template(),
    v: ti.template(),
    n: ti.i32,
    b1: float,
    b2: float,
    step: float,
    c2: float,
    eps: float,
    vmax: float,
    stage: ti.template(),
    vector: ti.template(),
) -> float:
    largest = 0.0
    for i in range(n):
        I = arrays.unravel(i, x)
        x[I], m[I], v[I], top = _adam_entry(
            x[I], g[I], m[I], v[I], b1, b2, step, c2, eps, vmax, stage, vector
        )
        if ti.static(stage == "moments"):
            ti.atomic_max(largest, top)
    return largest


# --------------------------------------------------------------------------- parameters


def _is_field(x) -> bool:
    return isinstance(x, (ti.ScalarField, ti.MatrixField))


def _is_vector(x) -> bool:
    return isinstance(x, ti.MatrixField) or bool(getattr(x, "element_shape", ()))


def _kernel(x, on_arrays, on_fields):
    return on_fields if _is_field(x) else on_arrays


def _elements(x) -> int:
    return math.prod(x.shape)


def _zero_grads(params) -> None:
    """Set the gradients of ``params`` (ndarrays and fields) to 0."""
    fields = [x for x in params if _is_field(x)]
    if fields:
        backend.zero_grads(*fields)  # one launch for all fields
    for x in params:
        if not _is_field(x):
            _zero(x.grad, _elements(x))  # a flat loop: 10× faster than Ndarray.fill


def _zeros_like(x):
    """A zero ndarray or field with the shape and element type of ``x``."""
    if isinstance(x, ti.Ndarray):
        e = tuple(getattr(x, "element_shape", ()))
        element = ti.types.vector(e[0], x.dtype) if len(e) == 1 else x.dtype
        element = ti.types.matrix(*e, x.dtype) if len(e) == 2 else element
        return ti.ndarray(element, x.shape)
    if not isinstance(x, ti.MatrixField):
        return ti.field(x.dtype, shape=x.shape)
    if x.m == 1:
        return ti.Vector.field(x.n, x.dtype, shape=x.shape)
    return ti.Matrix.field(x.n, x.m, x.dtype, shape=x.shape)


def _has_grad(x) -> bool:
    if _is_field(x):
        return x.snode.ptr.has_adjoint()
    return x.grad is not None


def _check_lr(lr, where: str) -> float:
    try:
        value = float(lr)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"learning rate {lr!r} for {where} must be a finite number > 0")
    return value


def _param_groups(params, lr) -> list:
    """[(param, lr, name)] from the accepted forms of ``params`` (see the module docstring)."""
    single = isinstance(params, ti.Ndarray) or _is_field(params)
    entries = [params] if single else list(params)
    if not entries:
        raise UserError("the optimizer got no parameters; pass a list of ndarrays or fields")
    rates = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(entries)
    if len(rates) != len(entries):
        raise UserError(
            f"got {len(rates)} learning rates for {len(entries)} parameters; give one each"
        )
    out = []
    for entry, rate in zip(entries, rates):
        name = None
        if isinstance(entry, dict):
            xs, rate, name = entry.get("params"), entry.get("lr", rate), entry.get("name")
            xs = [xs] if not isinstance(xs, (list, tuple)) else xs
        elif isinstance(entry, tuple):
            xs, rate = [entry[0]], entry[1]
        else:
            xs = [entry]
        for x in xs:
            k = len(out)
            label = f"parameter {k}" if name is None else f"parameter {name!r}"
            if not (isinstance(x, ti.Ndarray) or _is_field(x)):
                raise UserError(
                    f"{label} is a {type(x).__name__}, not a Taichi ndarray or field; "
                    "pass arrays allocated with needs_grad=True (torch tensors: use torch.optim)"
                )
            if not _has_grad(x):
                raise UserError(f"{label} has no gradient; allocate it with needs_grad=True")
            if any(x is y for y, _, _ in out):
                raise UserError(f"{label} is listed twice; list each parameter once")
            out.append((x, _check_lr(rate, label), label))
    return out


class _Optimizer:
    """Parameter groups, schedule, step counter, finite checks, zero_grad, state."""

    buffers_per_param: tuple = ()  # names of the per-parameter state buffers

    def __init__(self, params, lr, schedule, check_finite: bool):
        backend.ensure_init()
        groups = _param_groups(params, lr)
        self.params = [x for x, _, _ in groups]
        self.rates = [rate for _, rate, _ in groups]
        self.names = [name for _, _, name in groups]
        self.schedule = Constant() if schedule is None else schedule
        if not callable(self.schedule):
            raise UserError("schedule must be callable: step -> learning-rate factor")
        self.check_finite = check_finite
        self.steps = 0
        self.buffers = {
            name: [_zeros_like(x) for x in self.params] for name in self.buffers_per_param
        }

    def _check(self) -> None:
        big = float(np.finfo(backend.np_real()).max)
        for x, name in zip(self.params, self.names):
            check = _kernel(x, _nonfinite_arrays, _nonfinite_fields)
            count = check(x, x.grad, _elements(x), big, _is_vector(x))
            for what, n in zip(("values", "gradient"), count):
                if n:
                    raise UserError(
                        f"{name} {what} has {n} NaN/inf entries at step {self.steps}; "
                        "lower the learning rate or fix the loss/initial values"
                    )

    def lr(self, k: int = 0) -> float:
        """Learning rate the next step uses for parameter ``k``."""
        return self.rates[k] * self.schedule(self.steps)

    def step(self) -> None:
        """Update every parameter from its ``.grad`` (in place)."""
        if self.check_finite:
            self._check()
        factor = float(self.schedule(self.steps))
        self.steps += 1
        for k, (x, rate) in enumerate(zip(self.params, self.rates)):
            self._update(k, x, rate * factor)

    def zero_grad(self) -> None:
        _zero_grads(self.params)

    def state_dict(self) -> dict:
        """``{"steps": 0-d array, "<buffer>/<k>": array}`` (NumPy copies)."""
        out = {"steps": np.array(self.steps, dtype=np.int64)}
        for name, buffers in self.buffers.items():
            out.update({f"{name}/{k}": b.to_numpy() for k, b in enumerate(buffers)})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (of an optimizer over the same parameters)."""
        steps = int(_checked(state, "steps", np.zeros((), np.int64), "the step count"))
        values = [
            (b, _checked(state, f"{name}/{k}", b.to_numpy(), self.names[k]))
            for name, buffers in self.buffers.items()
            for k, b in enumerate(buffers)
        ]  # all checked before anything changes
        for b, value in values:
            b.from_numpy(value)
        self.steps = steps


def _checked(state: dict, key: str, like: np.ndarray, what: str) -> np.ndarray:
    """``state[key]`` as an array of ``like``'s shape and dtype, or a one-line error."""
    if key not in state:
        raise UserError(
            f"optimizer state lacks {key!r}; it was saved for other parameters or another optimizer"
        )
    a = np.asarray(state[key])
    if a.shape != like.shape:
        raise UserError(
            f"optimizer state {key!r} has shape {a.shape}, but {what} needs {like.shape}; "
            "it was saved for other parameters"
        )
    if not np.all(np.isfinite(a)) or (a.dtype.kind in "iu" and a.min(initial=0) < 0):
        raise UserError(f"optimizer state {key!r} holds NaN/inf or negative counts; discard it")
    return np.array(a, dtype=like.dtype, order="C")


class SGD(_Optimizer):
    """Gradient descent with (heavy-ball) momentum μ ∈ [0, 1)."""

    buffers_per_param = ("buffer",)

    def __init__(
        self, params, lr: float = 1e-2, momentum: float = 0.0, schedule=None, check_finite=True
    ):
        if not 0 <= momentum < 1:
            raise UserError(f"momentum is {momentum}; give 0 ≤ momentum < 1")
        super().__init__(params, lr, schedule, check_finite)
        self.momentum = float(momentum)

    def _update(self, k, x, lr) -> None:
        b = self.buffers["buffer"][k]
        _kernel(x, _sgd_arrays, _sgd_fields)(x, x.grad, b, _elements(x), lr, self.momentum)


class Adam(_Optimizer):
    """Adam (torch's update and defaults); ``uniform=True``: Nicolet et al.'s variant whose
    second-moment denominator is the maximum over the whole parameter."""

    buffers_per_param = ("m", "v")

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
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise UserError(f"Adam betas are {tuple(betas)}; give two numbers in [0, 1)")
        if not eps > 0:
            raise UserError(f"Adam eps is {eps}; give a small number > 0 (e.g. 1e-8)")
        super().__init__(params, lr, schedule, check_finite)
        self.betas, self.eps, self.uniform = (b1, b2), float(eps), bool(uniform)

    def _update(self, k, x, lr) -> None:
        (b1, b2), t = self.betas, self.steps
        m, v = self.buffers["m"][k], self.buffers["v"][k]
        h = (b1, b2, lr / (1 - b1**t), 1 - b2**t, self.eps)  # Adam's scalars at step t
        adam = _kernel(x, _adam_arrays, _adam_fields)
        args = (x, x.grad, m, v, _elements(x), *h)
        if self.uniform:
            vmax = adam(*args, 0.0, "moments", _is_vector(x))
            adam(*args, vmax, "update", _is_vector(x))
        else:
            adam(*args, 0.0, "both", _is_vector(x))


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
    """Optimise vertex ``positions`` (a (V,) vec3 ndarray or field with gradients) as
    ``u = (I + λL) x``, L the uniform Laplacian (Nicolet et al. 2021).

    :meth:`step` reads ``positions.grad`` (∂loss/∂x), maps it to ∂loss/∂u = (I + λL)⁻¹
    ∂loss/∂x (M is symmetric) on the host, takes an Adam step on u on the device
    (``uniform=True`` by default, as the paper recommends) and writes
    ``x = (I + λL)⁻¹ u`` back into ``positions``. M is factorised once (SciPy sparse LU;
    topology is fixed); each step moves the gradient and u through NumPy once as whole
    arrays. Only the first ``num_vertices`` entries are touched. Positions changed from
    outside must be re-read with :meth:`reset`.
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
        self.u = arrays.empty(V, 3, grad=True)
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

    def _write_positions(self) -> None:
        x = self.positions.to_numpy()
        x[: self.num_vertices] = self.from_differential(self.u.to_numpy())
        self.positions.from_numpy(x)

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
        self._write_positions()

    def zero_grad(self) -> None:
        _zero_grads([self.positions, self.u])

    def state_dict(self) -> dict:
        """Adam's state over u, and ``"u"``."""
        return {**self.adam.state_dict(), "u": self.u.to_numpy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; the positions become ``(I + λL)⁻¹ u``."""
        self.adam.load_state_dict(state)
        self.u.from_numpy(_checked(state, "u", self.u.to_numpy(), "u"))
        self._write_positions()


# --------------------------------------------------------------------------- checkpoints


class Checkpoint:
    """Parameters and the optimizers over them as one flat dict of NumPy arrays: the state
    an application hands the runner (``get`` / ``set``). Keys: ``param/<name>`` for each
    of ``params`` (name → Taichi ndarray or field) and ``<prefix>/<key>`` for each entry
    of each of ``optimizers``' :meth:`state_dict` (prefix → optimizer, e.g. ``adam/steps``,
    ``adam/m/0``). ``set`` refuses a checkpoint whose parameters are missing or shaped
    otherwise before anything changes, naming ``settings``: the options that decide the
    shapes (e.g. "grid or steps")."""

    def __init__(self, params: dict, optimizers: dict, settings: str):
        self.params = params
        self.optimizers = optimizers
        self.settings = settings

    def get(self) -> dict:
        out = {f"param/{name}": x.to_numpy() for name, x in self.params.items()}
        for prefix, opt in self.optimizers.items():
            out.update({f"{prefix}/{k}": v for k, v in opt.state_dict().items()})
        return out

    def set(self, state: dict) -> None:
        mismatch = UserError(
            f"--resume: the checkpoint was written with other settings ({self.settings} "
            "differ); use the same flags or another --out folder"
        )
        values = []
        for name, x in self.params.items():
            value = np.asarray(state.get(f"param/{name}", np.zeros(0)))
            like = x.to_numpy()
            if value.shape != like.shape:
                raise mismatch
            values.append((x, value.astype(like.dtype)))
        for prefix in self.optimizers:
            if not any(k.startswith(prefix + "/") for k in state):
                raise mismatch
        for prefix, opt in self.optimizers.items():
            n = len(prefix) + 1
            opt.load_state_dict({k[n:]: v for k, v in state.items() if k.startswith(prefix + "/")})
        for x, value in values:
            x.from_numpy(value)
