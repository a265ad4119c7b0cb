"""Float64 central-difference gradient checks for any scalar function of a NumPy vector.

``f`` maps a float64 array ``x`` (any shape; usually a vector) to a scalar float. A
central difference costs ``2 * x.size`` evaluations of ``f`` and has truncation error
O(h²); in float64 ``h ≈ 1e-6`` (about ``eps**(1/3)`` times the scale of ``x``) balances
truncation against round-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..errors import UserError


def check_step(h: float) -> float:
    """Return ``h`` as a float, or raise a one-line UserError if it is not a positive number."""
    try:
        h = float(h)
    except (TypeError, ValueError):
        raise UserError(f"step size h={h!r} is not a number; pass a positive float") from None
    if not (np.isfinite(h) and h > 0):
        raise UserError(f"step size h={h} must be positive and finite; try h=1e-6")
    return h


def check_point(x) -> np.ndarray:
    """Return a float64 copy of ``x``, or raise a one-line UserError if it is empty or has
    NaN/inf entries."""
    x = np.array(x, dtype=np.float64)
    if x.size == 0:
        raise UserError("the point x is empty; pass at least one coordinate")
    if not np.all(np.isfinite(x)):
        raise UserError("the point x has NaN or inf entries; pass finite numbers")
    return x


def _evaluate(f: Callable, x: np.ndarray) -> float:
    value = float(f(x.copy()))
    if not np.isfinite(value):
        raise UserError(
            f"f returned {value} near x={x.ravel()[:4]}...; use a point where f is finite"
        )
    return value


def central_difference(f: Callable[[np.ndarray], float], x, h: float = 1e-6) -> np.ndarray:
    """Gradient of scalar ``f`` at ``x`` by central differences (f(x+h e_i) − f(x−h e_i)) / 2h,
    in float64; same shape as ``x``. Costs ``2 * x.size`` evaluations of ``f``."""
    h = check_step(h)
    x = check_point(x)
    grad = np.empty_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        xi = flat[i]
        flat[i] = xi + h
        fp = _evaluate(f, x)
        flat[i] = xi - h
        fm = _evaluate(f, x)
        flat[i] = xi
        g[i] = (fp - fm) / (2.0 * h)
    return grad


class GradCheck(NamedTuple):
    """Result of :func:`gradcheck`; unpacks as ``(max_abs_err, max_rel_err, ok)``."""

    max_abs_err: float
    max_rel_err: float
    ok: bool


def gradcheck(
    f: Callable[[np.ndarray], float],
    grad_fn: Callable[[np.ndarray], np.ndarray],
    x,
    h: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-7,
) -> GradCheck:
    """Compare ``grad_fn(x)`` with the float64 central difference of ``f`` at ``x``.

    ``ok`` is True when every entry satisfies |g − g_fd| ≤ atol + rtol·|g_fd| (as
    ``np.allclose``); ``max_rel_err`` is max |g − g_fd| / max(|g_fd|, atol).
    """
    x = check_point(x)
    g_fd = central_difference(f, x, h)
    g = np.asarray(grad_fn(x.copy()), dtype=np.float64)
    if g.size != g_fd.size:
        raise UserError(
            f"grad_fn returned {g.size} values for {g_fd.size} inputs; return one per entry of x"
        )
    g = g.reshape(g_fd.shape)
    err = np.abs(g - g_fd)
    rel = err / np.maximum(np.abs(g_fd), atol)
    ok = bool(np.all(err <= atol + rtol * np.abs(g_fd)))
    return GradCheck(float(err.max()), float(rel.max()), ok)
