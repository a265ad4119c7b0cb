"""Finite differences: difference quotients, their step-size study, their cost.

A forward difference (f(x+h) − f(x)) / h has truncation error ≈ |f''| h / 2 and round-off
error ≈ 2 ε |f| / h (ε = machine epsilon), so the best step is h ≈ sqrt(ε) (times the
scale of f); a central difference (f(x+h) − f(x−h)) / 2h has truncation ≈ |f'''| h² / 6
and its best step is h ≈ ε^(1/3). A gradient of n inputs costs n + 1 evaluations of f by
forward differences and 2n by central differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .gradcheck import central_difference, check_point, check_step

SCHEMES = ("forward", "central")


def difference_quotient(f: Callable, x0: float, h: float, scheme: str, dtype=np.float64) -> float:
    """Derivative of scalar ``f`` at ``x0`` by a ``scheme`` ∈ SCHEMES difference with step
    ``h``, every operation in ``dtype`` (np.float32 or np.float64; ``f`` must keep it)."""
    h = check_step(h)
    x0 = float(check_point(x0))
    x, step = dtype(x0), dtype(h)
    if scheme == "forward":
        return float((f(x + step) - f(x)) / step)
    if scheme == "central":
        return float((f(x + step) - f(x - step)) / (dtype(2) * step))
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")


def gradient(f: Callable[[np.ndarray], float], x, h: float, scheme: str = "central"):
    """Gradient of scalar ``f`` at the float64 vector ``x``. Returns ``(grad, evaluations)``:
    n + 1 evaluations for ``scheme="forward"``, 2n for ``"central"``."""
    calls = [0]

    def counted(v):
        calls[0] += 1
        return f(v)

    if scheme == "central":
        return central_difference(counted, x, h), calls[0]
    if scheme != "forward":
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")
    h, x = check_step(h), check_point(x)
    f0 = counted(x.copy())
    grad = np.empty_like(x)
    for i in range(x.size):
        xp = x.copy()
        xp.flat[i] += h
        grad.flat[i] = (counted(xp) - f0) / h
    return grad, calls[0]


@dataclass(frozen=True)
class StudyFunction:
    """A scalar test function written with NumPy ufuncs (so it keeps float32 inputs in
    float32), its exact derivative (float64) and the point of the study."""

    name: str
    f: Callable
    df: Callable
    x0: float


def _nested_exp(x):
    return np.exp(np.exp(np.exp(x)))


def _nested_exp_derivative(x):
    e1 = np.exp(x)
    e2 = np.exp(e1)
    return e1 * e2 * np.exp(e2)


STUDY_FUNCTIONS = (
    StudyFunction("exp(exp(exp(x))) at x=0.1", _nested_exp, _nested_exp_derivative, 0.1),
    StudyFunction("sin(x) at x=1", np.sin, np.cos, 1.0),
)


@dataclass(frozen=True)
class StepStudy:
    """Relative errors |D_h − f'| / |f'| of one scheme and dtype over steps ``hs``."""

    function: str
    scheme: str
    dtype: str
    hs: np.ndarray
    errors: np.ndarray

    @property
    def best(self) -> tuple[float, float]:
        """(h, relative error) at the smallest error."""
        i = int(np.argmin(self.errors))
        return float(self.hs[i]), float(self.errors[i])


def step_study(fn: StudyFunction, scheme: str, dtype, hs) -> StepStudy:
    """Error of the ``scheme`` difference of ``fn`` in ``dtype`` for every step in ``hs``."""
    exact = float(fn.df(np.float64(fn.x0)))
    hs = np.asarray(hs, dtype=np.float64)
    approx = np.array([difference_quotient(fn.f, fn.x0, h, scheme, dtype) for h in hs])
    errors = np.abs(approx - exact) / abs(exact)
    return StepStudy(fn.name, scheme, np.dtype(dtype).name, hs, errors)


def step_studies(hs=None) -> list[StepStudy]:
    """Every study function × scheme × {float32, float64} over ``hs`` (default 10^-15 … 10^0,
    four steps per decade)."""
    if hs is None:
        hs = np.logspace(-15, 0, 61)
    return [
        step_study(fn, scheme, dtype, hs)
        for fn in STUDY_FUNCTIONS
        for dtype in (np.float32, np.float64)
        for scheme in SCHEMES
    ]
