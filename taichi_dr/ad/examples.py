"""The example functions, written once in plain Python (floats or :class:`~.dual.Dual`s),
with their analytic derivatives as independent references.

* ``exp_chain(x, k)``: r = x, then k times r = exp(r). By the chain rule the derivative is
  the product of the intermediate results r₁ ⋯ r_k — the algorithmic derivative
  ``d_result *= result`` after each step.
* ``exp_while(x)``: the same body applied while 0.1 < r < 10 (a data-dependent count).
* ``chain_2x2(x0, x1)``: two inputs, two outputs through a scalar bottleneck:
  y = f(x0, x1) = x0·x1 + sin(x0),  z = g(y) = exp(y / 2),
  (w0, w1) = h(z) = (cos z, log(1 + z²)).
"""

from __future__ import annotations

import numpy as np

from . import dual

WHILE_LOW, WHILE_HIGH = 0.1, 10.0


def exp_chain(x, k: int = 3):
    """exp applied ``k`` times to ``x`` (float or Dual)."""
    r = x
    for _ in range(k):
        r = dual.exp(r)
    return r


def exp_chain_grad(x: float, k: int = 3) -> tuple[float, float]:
    """(value, derivative) of :func:`exp_chain`: derivative = product of the results."""
    r, d_result = float(x), 1.0
    for _ in range(k):
        r = np.exp(r)
        d_result *= r
    return float(r), float(d_result)


def exp_while(x):
    """Apply r = exp(r) while WHILE_LOW < r < WHILE_HIGH; return the final r."""
    r = x
    while WHILE_LOW < r < WHILE_HIGH:
        r = dual.exp(r)
    return r


def exp_while_grad(x: float) -> tuple[float, float, int]:
    """(value, derivative, number of steps) of :func:`exp_while`."""
    r, d_result, steps = float(x), 1.0, 0
    while WHILE_LOW < r < WHILE_HIGH:
        r = np.exp(r)
        d_result *= r
        steps += 1
    return float(r), float(d_result), steps


def chain_2x2(x0, x1):
    """(w0, w1) = h(g(f(x0, x1))) with the f, g, h of the module docstring."""
    y = x0 * x1 + dual.sin(x0)
    z = dual.exp(0.5 * y)
    return dual.cos(z), dual.log(1.0 + z * z)


def chain_2x2_jacobian(x0: float, x1: float) -> np.ndarray:
    """Analytic 2×2 Jacobian ∂(w0, w1)/∂(x0, x1) = h'(z) g'(y) ∇f."""
    y = x0 * x1 + np.sin(x0)
    z = np.exp(0.5 * y)
    grad_f = np.array([x1 + np.cos(x0), x0])
    dz = 0.5 * z
    dh = np.array([-np.sin(z), 2.0 * z / (1.0 + z * z)])
    return np.outer(dh * dz, grad_f)
