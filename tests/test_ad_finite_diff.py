import numpy as np
import pytest

from taichi_dr import UserError
from taichi_dr.ad.finite_diff import (
    STUDY_FUNCTIONS,
    difference_quotient,
    gradient,
    step_studies,
    step_study,
)

HS = np.logspace(-15, 0, 61)


@pytest.fixture(scope="module")
def studies():
    return {(s.function, s.dtype, s.scheme): s for s in step_studies(HS)}


def _slope(study, h_lo, h_hi):
    """Log-log slope of the error between two steps (truncation regime)."""
    i, j = np.argmin(abs(study.hs - h_lo)), np.argmin(abs(study.hs - h_hi))
    return np.log(study.errors[j] / study.errors[i]) / np.log(study.hs[j] / study.hs[i])


@pytest.mark.parametrize("fn", STUDY_FUNCTIONS, ids=lambda f: f.name)
def test_truncation_error_is_first_order_forward_second_order_central(studies, fn):
    fwd, cen = studies[fn.name, "float64", "forward"], studies[fn.name, "float64", "central"]
    assert 0.8 < _slope(fwd, 1e-5, 1e-3) < 1.2
    assert 1.8 < _slope(cen, 1e-4, 1e-2) < 2.2


@pytest.mark.parametrize("fn", STUDY_FUNCTIONS, ids=lambda f: f.name)
def test_best_step_balances_truncation_and_roundoff(studies, fn):
    for dtype in ("float32", "float64"):
        eps = np.finfo(dtype).eps
        fwd_h, fwd_err = studies[fn.name, dtype, "forward"].best
        cen_h, cen_err = studies[fn.name, dtype, "central"].best
        # optimum within ~1.5 decades of the textbook sqrt(eps) and eps^(1/3)
        assert abs(np.log10(fwd_h / np.sqrt(eps))) < 1.6
        assert abs(np.log10(cen_h / np.cbrt(eps))) < 1.6
        assert cen_h > fwd_h and cen_err < fwd_err
        # round-off: below the optimum the error grows again
        assert studies[fn.name, dtype, "forward"].errors[0] > 100 * fwd_err
    assert (
        studies[fn.name, "float32", "central"].best[1]
        > 1e3 * (studies[fn.name, "float64", "central"].best[1])
    )


def test_difference_quotient_keeps_the_dtype():
    fn = STUDY_FUNCTIONS[1]  # sin at 1
    d32 = difference_quotient(fn.f, fn.x0, 1e-7, "forward", np.float32)
    d64 = difference_quotient(fn.f, fn.x0, 1e-7, "forward", np.float64)
    assert abs(d64 - np.cos(1.0)) < 1e-7 and abs(d32 - np.cos(1.0)) > 1e-3


@pytest.mark.parametrize("n", [1, 5, 40])
def test_gradient_costs_n_plus_1_or_2n_evaluations(rng, n):
    x = rng.uniform(-1, 1, size=n)
    f = lambda v: float(np.sum(np.exp(v) * v))  # noqa: E731
    exact = np.exp(x) * (1 + x)
    g, calls = gradient(f, x, 1e-7, "forward")
    assert calls == n + 1 and np.allclose(g, exact, rtol=1e-5, atol=1e-6)
    g, calls = gradient(f, x, 1e-6, "central")
    assert calls == 2 * n and np.allclose(g, exact, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("h", [0.0, -0.1, np.nan])
def test_bad_step_is_a_user_error(h):
    with pytest.raises(UserError, match="step size"):
        step_study(STUDY_FUNCTIONS[0], "central", np.float64, [1e-3, h])
    with pytest.raises(UserError, match="step size"):
        gradient(np.sum, np.ones(2), h, "forward")


def test_bad_point_and_scheme():
    with pytest.raises(UserError, match="NaN or inf"):
        difference_quotient(np.sin, np.nan, 1e-3, "forward")
    with pytest.raises(ValueError, match="unknown scheme"):
        difference_quotient(np.sin, 0.0, 1e-3, "backward")
