"""The cheap-gradient principle, measured.

For L: Rⁿ → R, reverse mode returns the whole gradient in one backward pass at a small
constant multiple of the cost of evaluating L, whatever n; forward mode needs n passes (one
per input direction) and finite differences n + 1 or 2n evaluations. :class:`RingProduct`
is the test function, :func:`measure` times the three against one evaluation.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .gradcheck import central_difference, check_point


def check_size(n) -> int:
    """Return ``n`` as an int ≥ 1, or raise a one-line UserError."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise UserError(f"n={n!r} inputs: n must be an integer ≥ 1; pass e.g. n=64")
    return int(n)


@ti.data_oriented
class RingProduct:
    """L(x) = Σᵢ sin(xᵢ)·cos(x₍ᵢ₊₁₎ mod n) for x ∈ Rⁿ; fields ``x`` (n,), ``loss`` 0-D,
    both with grads and duals. Every input is coupled to its two neighbours."""

    def __init__(self, n: int):
        self.n = check_size(n)
        real = backend.real()
        self.x = ti.field(real, shape=self.n, needs_grad=True, needs_dual=True)
        self.loss = ti.field(real, shape=(), needs_grad=True, needs_dual=True)

    def set_x(self, x) -> None:
        x = check_point(x)
        if x.shape != (self.n,):
            raise UserError(f"x has shape {x.shape}, expected ({self.n},); pass n numbers")
        self.x.from_numpy(x.astype(backend.np_real()))

    def value(self) -> float:
        """L(x): one evaluation."""
        self.loss.fill(0)
        self._loss()
        return self.loss[None]

    def grad_reverse(self) -> np.ndarray:
        """∇L by reverse mode: one Tape pass."""
        self.x.grad.fill(0)
        with ti.ad.Tape(loss=self.loss, clear_gradients=False):
            self._loss()
        return self.x.grad.to_numpy()

    def grad_forward(self) -> np.ndarray:
        """∇L by forward mode: n FwdMode passes, the i-th seeded with the unit vector eᵢ."""
        grad = np.empty(self.n)
        seed = [0.0] * self.n
        for i in range(self.n):
            seed[i] = 1.0
            self.loss.fill(0)
            self.loss.dual.fill(0)
            with ti.ad.FwdMode(loss=self.loss, param=self.x, seed=seed, clear_gradients=False):
                self._loss()
            grad[i] = self.loss.dual[None]
            seed[i] = 0.0
        return grad

    def grad_central(self, h: float = 1e-6) -> np.ndarray:
        """∇L by central differences: 2n evaluations."""
        x = self.x.to_numpy().astype(np.float64)

        def f(v):
            self.x.from_numpy(v.astype(backend.np_real()))
            return self.value()

        grad = central_difference(f, x, h)
        self.set_x(x)
        return grad

    def grad_exact(self) -> np.ndarray:
        """The analytic gradient cos xᵢ cos xᵢ₊₁ − sin xᵢ₋₁ sin xᵢ, in float64 NumPy."""
        x = self.x.to_numpy().astype(np.float64)
        return np.cos(x) * np.cos(np.roll(x, -1)) - np.sin(np.roll(x, 1)) * np.sin(x)

    @ti.kernel
    def _loss(self):
        for i in self.x:
            self.loss[None] += ti.sin(self.x[i]) * ti.cos(self.x[(i + 1) % self.n])


def _best_time(fn: Callable, min_seconds: float = 0.02, max_reps: int = 50) -> float:
    """Smallest wall time of ``fn()`` over repeats (at least 3, until ``min_seconds``)."""
    fn()  # compile and warm up
    best, total, reps = np.inf, 0.0, 0
    while reps < 3 or (total < min_seconds and reps < max_reps):
        t0 = time.perf_counter()
        fn()
        ti.sync()
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


@dataclass(frozen=True)
class CostRow:
    """Seconds for one evaluation and for the full gradient by each mode at ``n`` inputs
    (``None`` where not measured)."""

    n: int
    eval_s: float
    reverse_s: float
    forward_s: float | None
    central_s: float | None

    def ratio(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds / self.eval_s


def measure(n: int, forward: bool = True, central: bool = True, seed: int = 0) -> CostRow:
    """Time one evaluation of :class:`RingProduct` with ``n`` inputs and its gradient by reverse
    mode, and (if asked) by n forward-mode passes and by 2n-evaluation central differences."""
    prog = RingProduct(n)
    prog.set_x(np.random.default_rng(seed).uniform(-1.0, 1.0, size=prog.n))
    return CostRow(
        n=prog.n,
        eval_s=_best_time(prog.value),
        reverse_s=_best_time(prog.grad_reverse),
        forward_s=_best_time(prog.grad_forward, max_reps=3) if forward else None,
        central_s=_best_time(prog.grad_central, max_reps=3) if central else None,
    )


def cost_study(
    sizes=(1, 4, 16, 64, 256, 1024, 4096), max_forward_n: int = 1024, seed: int = 0
) -> list[CostRow]:
    """:func:`measure` over ``sizes``; forward mode and central differences (O(n²) work) only
    up to ``max_forward_n``."""
    sizes = [check_size(n) for n in sizes]
    return [
        measure(n, forward=n <= max_forward_n, central=n <= max_forward_n, seed=seed) for n in sizes
    ]
