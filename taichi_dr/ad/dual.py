"""Forward mode with dual numbers: a + b·ε with ε² = 0, in plain Python.

Evaluating f on ``Dual(x, 1)`` carries the derivative along: f(a + b ε) = f(a) + f'(a) b ε.
The functions :func:`exp`, :func:`sin`, :func:`cos`, :func:`log` accept floats and duals,
so one definition of f serves for values and derivatives. One pass per input direction:
the Jacobian of f: Rⁿ → Rᵐ takes n passes.
"""

from __future__ import annotations

import math

import numpy as np


class Dual:
    """A dual number ``val + eps·ε``; ``eps`` is the derivative along the seeded direction."""

    __slots__ = ("val", "eps")

    def __init__(self, val: float, eps: float = 0.0):
        self.val = float(val)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"Dual({self.val!r}, {self.eps!r})"

    def __add__(self, o):
        o = _lift(o)
        return Dual(self.val + o.val, self.eps + o.eps)

    __radd__ = __add__

    def __sub__(self, o):
        o = _lift(o)
        return Dual(self.val - o.val, self.eps - o.eps)

    def __rsub__(self, o):
        return _lift(o) - self

    def __neg__(self):
        return Dual(-self.val, -self.eps)

    def __mul__(self, o):
        o = _lift(o)
        return Dual(self.val * o.val, self.eps * o.val + self.val * o.eps)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = _lift(o)
        return Dual(self.val / o.val, (self.eps * o.val - self.val * o.eps) / (o.val * o.val))

    def __rtruediv__(self, o):
        return _lift(o) / self

    def __pow__(self, p: float):
        """Real constant exponent ``p``."""
        return Dual(self.val**p, p * self.val ** (p - 1) * self.eps)

    def __lt__(self, o):
        return self.val < _lift(o).val

    def __gt__(self, o):
        return self.val > _lift(o).val


def _lift(x) -> Dual:
    return x if isinstance(x, Dual) else Dual(x)


def _unary(fn, dfn):
    def op(x):
        if isinstance(x, Dual):
            return Dual(fn(x.val), dfn(x.val) * x.eps)
        return fn(x)

    op.__doc__ = f"{fn.__name__} of a float or a Dual."
    op.__name__ = fn.__name__
    return op


exp = _unary(math.exp, math.exp)
sin = _unary(math.sin, math.cos)
cos = _unary(math.cos, lambda v: -math.sin(v))
log = _unary(math.log, lambda v: 1.0 / v)


def derivative(f, x: float) -> tuple[float, float]:
    """(f(x), f'(x)) of a scalar function by one dual-number pass."""
    y = f(Dual(x, 1.0))
    return y.val, y.eps


def jacobian(f, x) -> tuple[np.ndarray, np.ndarray]:
    """(f(x), J) of ``f(*inputs) -> tuple of outputs``; one pass per input (column of J)."""
    x = [float(v) for v in x]
    cols, value = [], None
    for j in range(len(x)):
        out = f(*[Dual(v, 1.0 if i == j else 0.0) for i, v in enumerate(x)])
        value = np.array([_lift(o).val for o in out])
        cols.append([_lift(o).eps for o in out])
    return value, np.array(cols).T
