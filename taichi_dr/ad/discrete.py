"""Derivatives of programs with discrete choices: record the choice, replay it backwards.

A branch taken, a neighbour found, a permutation or a sparse block touched is a piecewise
constant function of the inputs: it changes only on *switching sets* (a branch condition at
equality, two neighbours at equal distance, two keys equal). Away from them the choice is
locally constant, so the program is, locally, an ordinary differentiable program with the
choice as fixed data — exactly like the intermediate values a reverse pass pops from its stack.
The forward pass records the choice; the reverse pass replays the same choice:

* **branch** — ``y = x² if x < 1 else x² + ½``: Taichi's reverse pass re-evaluates the
  condition on the stored input and differentiates the branch taken (2x on both sides).
* **neighbour** — ``L(q) = |q − p_nn(q)|²`` with the nearest point found by the k-d tree
  (:class:`taichi_dr.discrete.KDTree`); the index is recorded, and the gather's derivative
  ``2 (q − p_nn)`` is replayed with it.
* **permutation** — ``L(x) = Σ_k w_k sort(x)_k``: the forward pass records the permutation
  (a stable argsort), gathers ``y_k = x_perm(k)``; the reverse pass scatters
  ``∂L/∂x_perm(k) += w_k`` through the same permutation (the splatting renderer's depth sort
  needs exactly this; :mod:`taichi_dr.discrete` will hold the real one).
* **sparse block** — a sparse voxel grid (:mod:`taichi_dr.voxels`) reads inactive blocks as 0
  and writes gradients only into the blocks that are active (recorded when the grid was
  pruned); its gradients equal a dense grid's on the active cells (``tests/test_voxels.py``).

At a switching point the derivative of the recorded choice is one of the one-sided derivatives
(the tie rule picks which). Where the function is continuous (a nearest-neighbour distance, a
sorted sum: a kink) a central difference straddling the switch returns their average; where it
jumps (the branch) the central difference sees the jump, (jump)/(2h), which no derivative
contains — the reason rasterizers need dedicated visibility gradients (antialias, soft).

Kernels are module-level over ndarrays (float64 when ``taichi_dr.init(precision="f64")``).
"""

import numpy as np
import taichi as ti

from .. import backend

JUMP_AT, JUMP = 1.0, 0.5  # the branch: x² below JUMP_AT, x² + JUMP from there on


@ti.kernel
def _branch(x: ti.types.ndarray(), y: ti.types.ndarray()):
    for i in range(x.shape[0]):
        v = x[i]
        if v < JUMP_AT:
            y[i] = v * v
        else:
            y[i] = v * v + JUMP


@ti.kernel
def _distance(
    q: ti.types.ndarray(), p: ti.types.ndarray(), nearest: ti.i32, out: ti.types.ndarray()
):
    for i in range(1):
        d = 0.0
        for a in ti.static(range(3)):
            d += (q[a] - p[nearest, a]) ** 2
        out[i] = d


@ti.kernel
def _gather_dot(
    x: ti.types.ndarray(), perm: ti.types.ndarray(), w: ti.types.ndarray(), out: ti.types.ndarray()
):
    for k in range(perm.shape[0]):
        out[0] += w[k] * x[perm[k]]  # y_k = x_perm(k), L = Σ w_k y_k


@ti.kernel
def _scatter_dot(
    g: float, perm: ti.types.ndarray(), w: ti.types.ndarray(), grad: ti.types.ndarray()
):
    for k in range(perm.shape[0]):
        grad[perm[k]] += g * w[k]  # the same permutation, replayed


def _scalar(value: float):
    a = ti.ndarray(backend.real(), 1, needs_grad=True)
    a.from_numpy(np.array([value], backend.np_real()))
    return a


def branch(x: float) -> tuple[float, float]:
    """(y, dy/dx) of the branch, the derivative by Taichi's reverse mode."""
    xs, ys = _scalar(x), _scalar(0.0)
    _branch(xs, ys)
    ys.grad.from_numpy(np.ones(1, backend.np_real()))
    _branch.grad(xs, ys)
    return float(ys.to_numpy()[0]), float(xs.grad.to_numpy()[0])


class Neighbour:
    """``L(t) = |q(t) − p_nn|²`` with ``q(t) = (t, 0.3, 0)`` over fixed points: ``(-½, 0, 0)``,
    ``(½, 0, 0)`` and farther ones. The nearest point switches at t = 0 (equidistant: ties go
    to the smaller index, the left point)."""

    SWITCH = 0.0

    def __init__(self, seed: int = 0):
        from ..discrete import KDTree

        rng = np.random.default_rng(seed)
        far = rng.normal(size=(30, 3))
        far = 2.0 * far / np.linalg.norm(far, axis=1, keepdims=True)  # all 2 from the origin
        self.points = np.concatenate([[[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]], far])
        self.tree = KDTree(self.points)
        self._points = ti.ndarray(backend.real(), self.points.shape)
        self._points.from_numpy(self.points.astype(backend.np_real()))

    def value_and_grad(self, t: float) -> tuple[float, float, int]:
        """(L, dL/dt, index of the neighbour found) at ``t``."""
        q = np.array([t, 0.3, 0.0])
        nearest = int(self.tree.query(q[None])[1][0])  # the choice, recorded
        qs, out = ti.ndarray(backend.real(), 3, needs_grad=True), _scalar(0.0)
        qs.from_numpy(q.astype(backend.np_real()))
        _distance(qs, self._points, nearest, out)
        out.grad.from_numpy(np.ones(1, backend.np_real()))
        _distance.grad(qs, self._points, nearest, out)  # replayed with the same index
        return float(out.to_numpy()[0]), float(qs.grad.to_numpy()[0]), nearest


class SortedSum:
    """``L(t) = Σ_k w_k sort(x(t))_k`` with ``x(t) = (t, 0.2, 0.5, 0.9)`` and weights
    ``w = (1, 2, 3, 4)``: dL/dt is the weight of t's rank, switching at 0.2, 0.5 and 0.9."""

    SWITCH = 0.5

    def __init__(self):
        self.w = np.array([1.0, 2.0, 3.0, 4.0])

    def value_and_grad(self, t: float) -> tuple[float, float, np.ndarray]:
        """(L, dL/dt by the replayed permutation, the permutation)."""
        x = np.array([t, 0.2, 0.5, 0.9])
        perm = np.argsort(x, kind="stable").astype(np.int32)  # the choice, recorded
        real = backend.np_real()
        out = np.zeros(1, real)
        _gather_dot(x.astype(real), perm, self.w.astype(real), out)
        grad = np.zeros(4, real)
        _scatter_dot(1.0, perm, self.w.astype(real), grad)
        return float(out[0]), float(grad[0]), perm


def central(f, t: float, h: float) -> float:
    return (f(t + h) - f(t - h)) / (2 * h)


def agreement(h: float = 1e-6) -> list[dict]:
    """AD against central differences for each example, away from its switching point and at
    it (where the one-sided derivatives differ)."""
    nn, ss = Neighbour(), SortedSum()
    cases = [
        ("branch (jump)", lambda t: branch(t), 0.63, JUMP_AT),
        ("nearest neighbour (kink)", nn.value_and_grad, 0.37, nn.SWITCH),
        ("permutation (kink)", ss.value_and_grad, 0.31, ss.SWITCH),
    ]
    rows = []
    for name, fn, away, switch in cases:

        def value(t, fn=fn):
            return fn(t)[0]

        for where, t in (("away", away), ("at switch", switch)):
            ad = fn(t)[1]
            rows.append(
                {
                    "example": name,
                    "where": where,
                    "t": t,
                    "ad": ad,
                    "central_fd": central(value, t, h),
                    "left": fn(t - 1e-7)[1],
                    "right": fn(t + 1e-7)[1],
                }
            )
    return rows


def sweep(h: float = 0.02, count: int = 161) -> dict:
    """L, the AD derivative and central differences (step ``h``) along t across the
    switching points of the neighbour and branch examples (for the plot)."""
    nn = Neighbour()
    out = {}
    for name, fn, lo, hi, switch in (
        ("nearest neighbour", nn.value_and_grad, -0.3, 0.3, nn.SWITCH),
        ("branch", branch, 0.7, 1.3, JUMP_AT),
    ):
        ts = np.linspace(lo, hi, count)
        pairs = [fn(t)[:2] for t in ts]
        out[name] = {
            "t": ts,
            "loss": np.array([p[0] for p in pairs]),
            "ad": np.array([p[1] for p in pairs]),
            "fd": np.array([central(lambda s, fn=fn: fn(s)[0], t, h) for t in ts]),
            "h": h,
            "switch": switch,
        }
    return out
