"""The example functions as Taichi kernels, differentiated every way Taichi allows.

:class:`ExpLoop` computes r = x; n times r = exp(r) (and the while-loop variant) and returns
dy/dx by reverse mode on a Tape (with ``ti.exp`` — wrong in Taichi 1.7.4, see below — with
``ti.pow(e, r)``, or unrolled with ``ti.static``), by an explicit stack (push in the forward
loop, pop in a hand-written reverse loop), by that stack plugged into a Tape with
``ti.ad.grad_replaced``, and by forward mode (``ti.ad.FwdMode``).
:class:`Chain2x2` computes the two-in, two-out example of :mod:`.examples` and its Jacobian
by forward mode (one pass per input) and reverse mode (one pass per output).

Taichi 1.7.4 bug: in reverse mode, ``exp`` (also tanh, rsqrt, min/max) inside a runtime loop
nested in the kernel's top-level loop uses the *last* iteration's result in every backward
step, so ``METHODS["tape-exp"]`` returns y_final**n instead of r₁⋯r_n (8597.456 instead of
68.368 at x = 0.1, n = 3) — silently. Every other method here is right.

Fields are allocated when an object is built (after ``taichi_dr.init``), in ``backend.real()``.
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .examples import WHILE_HIGH, WHILE_LOW
from .gradcheck import check_point

METHODS = {
    "tape-exp": "Tape, runtime loop of ti.exp (Taichi bug: wrong)",
    "tape-pow": "Tape, runtime loop of ti.pow(e, r)",
    "tape-static": "Tape, loop unrolled with ti.static",
    "stack": "explicit stack: push forward, pop in a hand-written reverse loop",
    "grad-replaced": "Tape with the stack adjoint via ti.ad.grad_replaced",
    "fwdmode": "ti.ad.FwdMode (forward mode), runtime loop of ti.exp",
}


def _check_x(x) -> float:
    if np.ndim(x) != 0:
        raise UserError(f"x must be one number, got shape {np.shape(x)}; pass a float")
    return float(check_point(x))


@ti.data_oriented
class ExpLoop:
    """y = exp applied n times to x (1 ≤ n ≤ ``capacity``), and the while-loop variant.

    ``x`` is a 1-element field (FwdMode needs a 1-D parameter), ``y`` a 0-D field (a Tape
    needs a 0-D loss); ``stack`` holds the pushed intermediate results, ``top`` its length.
    """

    def __init__(self, capacity: int = 16):
        real = backend.real()
        self.capacity = capacity
        self.x = ti.field(real, shape=1, needs_grad=True, needs_dual=True)
        self.y = ti.field(real, shape=(), needs_grad=True, needs_dual=True)
        self.n = ti.field(ti.i32, shape=())
        self.stack = ti.field(real, shape=capacity)
        self.top = ti.field(ti.i32, shape=())

    def value_and_grad(self, x: float, n: int, method: str) -> tuple[float, float]:
        """(y, dy/dx) of the n-fold exp at ``x`` by ``method`` ∈ METHODS."""
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if not (isinstance(n, (int, np.integer)) and 1 <= n <= self.capacity):
            raise UserError(f"n={n!r} must be an integer in [1, {self.capacity}]; pass e.g. n=3")
        self.x[0] = _check_x(x)
        self.n[None] = int(n)
        self.x.grad.fill(0)
        if method == "fwdmode":
            self.y.dual[None] = 0  # forward-mode stores accumulate into duals
            with ti.ad.FwdMode(loss=self.y, param=self.x, seed=[1.0], clear_gradients=False):
                self._loop_exp()
            return self.y[None], self.y.dual[None]
        if method == "stack":
            self._push_loop()
            self._reverse()
            return self.y[None], self.x.grad[0]
        forward = {
            "tape-exp": self._loop_exp,
            "tape-pow": self._loop_pow,
            "tape-static": lambda: self._unrolled_exp(int(n)),
            "grad-replaced": self._stacked_loop,
        }[method]
        with ti.ad.Tape(loss=self.y, clear_gradients=False):
            forward()
        return self.y[None], self.x.grad[0]

    def while_value_and_grad(self, x: float) -> tuple[float, float, int]:
        """(y, dy/dx, steps) of r = exp(r) applied while 0.1 < r < 10, by the explicit stack;
        the reverse loop runs for the stack's length."""
        self.x[0] = _check_x(x)
        self.x.grad.fill(0)
        self._push_while()
        steps = self.top[None]
        if WHILE_LOW < self.y[None] < WHILE_HIGH:
            raise UserError(f"the while loop did not end within {self.capacity} steps")
        self._reverse()
        return self.y[None], self.x.grad[0], steps

    def _reverse(self):
        self.y.grad[None] = 1.0
        self._pop_adjoint()

    @ti.kernel
    def _loop_exp(self):
        for _ in range(1):  # AD needs the serial loop nested in a top-level loop
            r = self.x[0]
            for _i in range(self.n[None]):
                r = ti.exp(r)
            self.y[None] = r

    @ti.kernel
    def _loop_pow(self):
        for _ in range(1):
            r = self.x[0]
            for _i in range(self.n[None]):
                r = ti.pow(math.e, r)
            self.y[None] = r

    @ti.kernel
    def _unrolled_exp(self, k: ti.template()):
        r = self.x[0]
        for _i in ti.static(range(k)):
            r = ti.exp(r)
        self.y[None] = r

    @ti.kernel
    def _push_loop(self):
        for _ in range(1):
            r = self.x[0]
            self.top[None] = 0
            for _i in range(self.n[None]):
                r = ti.exp(r)
                self.stack[self.top[None]] = r  # push(result)
                self.top[None] += 1
            self.y[None] = r

    @ti.kernel
    def _push_while(self):
        for _ in range(1):
            r = self.x[0]
            self.top[None] = 0
            while WHILE_LOW < r < WHILE_HIGH and self.top[None] < self.capacity:
                r = ti.exp(r)
                self.stack[self.top[None]] = r
                self.top[None] += 1
            self.y[None] = r

    @ti.kernel
    def _pop_adjoint(self):
        for _ in range(1):
            d_result = self.y.grad[None]
            for _i in range(self.top[None]):  # as many steps as were pushed
                self.top[None] -= 1
                d_result *= self.stack[self.top[None]]  # pop(): d_result *= result
            self.x.grad[0] += d_result

    @ti.ad.grad_replaced
    def _stacked_loop(self):
        self._push_loop()

    @ti.ad.grad_for(_stacked_loop)
    def _stacked_loop_grad(self):
        self._pop_adjoint()


@ti.data_oriented
class Chain2x2:
    """w = h(g(f(x))) of :func:`.examples.chain_2x2` as three kernels, one per stage.

    Fields: ``x`` (2,), ``y`` and ``z`` 0-D, ``w`` (2,), ``out`` 0-D (the selected output, the
    Tape's loss). All carry grads and duals.
    """

    def __init__(self):
        real = backend.real()

        def field(shape):
            return ti.field(real, shape=shape, needs_grad=True, needs_dual=True)

        self.x, self.y, self.z, self.w, self.out = (
            field(2),
            field(()),
            field(()),
            field(2),
            field(()),
        )

    def _forward(self):
        self._f()
        self._g()
        self._h()

    def jacobian_forward(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(w, J) by forward mode: one FwdMode pass per input gives one column."""
        self.x.from_numpy(self._check(x))
        cols = []
        for j in range(2):
            seed = [1.0 if i == j else 0.0 for i in range(2)]
            for f in (self.y, self.z, self.w):
                f.dual.fill(0)  # forward-mode stores accumulate into duals
            with ti.ad.FwdMode(loss=self.w, param=self.x, seed=seed, clear_gradients=False):
                self._forward()
            cols.append(self.w.dual.to_numpy())
        return self.w.to_numpy(), np.array(cols).T

    def jacobian_reverse(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(w, J) by reverse mode: one Tape pass per output gives one row."""
        self.x.from_numpy(self._check(x))
        rows = []
        for i in range(2):
            for f in (self.x, self.y, self.z, self.w):
                f.grad.fill(0)
            with ti.ad.Tape(loss=self.out, clear_gradients=False):
                self._forward()
                self._select(i)
            rows.append(self.x.grad.to_numpy())
        return self.w.to_numpy(), np.array(rows)

    @staticmethod
    def _check(x) -> np.ndarray:
        x = check_point(x).astype(backend.np_real())
        if x.shape != (2,):
            raise UserError(f"x must hold 2 numbers (x0, x1), got shape {x.shape}")
        return x

    @ti.kernel
    def _f(self):
        self.y[None] = self.x[0] * self.x[1] + ti.sin(self.x[0])

    @ti.kernel
    def _g(self):
        self.z[None] = ti.exp(0.5 * self.y[None])

    @ti.kernel
    def _h(self):
        z = self.z[None]
        self.w[0] = ti.cos(z)
        self.w[1] = ti.log(1.0 + z * z)

    @ti.kernel
    def _select(self, i: ti.i32):
        self.out[None] = self.w[i]
