import numpy as np
import pytest

from taichi_dr import UserError
from taichi_dr.ad.gradcheck import central_difference, gradcheck


def _f(x):
    return float(np.sum(np.sin(x) * x**2) + x[0] * x[-1])


def _grad(x):
    g = np.cos(x) * x**2 + 2 * x * np.sin(x)
    g[0] += x[-1]
    g[-1] += x[0]
    return g


def test_central_difference_matches_analytic_gradient(rng):
    x = rng.uniform(-2, 2, size=7)
    assert np.allclose(central_difference(_f, x, 1e-6), _grad(x), rtol=1e-8, atol=1e-9)


def test_central_difference_keeps_shape_and_does_not_touch_x(rng):
    x = rng.uniform(-1, 1, size=(2, 3))
    x0 = x.copy()
    g = central_difference(lambda v: float(np.sum(v**3)), x)
    assert g.shape == (2, 3) and np.allclose(g, 3 * x0**2, rtol=1e-8)
    assert np.array_equal(x, x0)


def test_gradcheck_accepts_right_and_rejects_wrong_gradient(rng):
    x = rng.uniform(-2, 2, size=5)
    abs_err, rel_err, ok = gradcheck(_f, _grad, x)
    assert ok and abs_err < 1e-7 and rel_err < 1e-6
    wrong = gradcheck(_f, lambda v: _grad(v) * (1 + 1e-3), x)
    assert not wrong.ok and wrong.max_rel_err > 5e-4


def test_gradcheck_rejects_nan_gradient():
    assert not gradcheck(_f, lambda v: np.full_like(v, np.nan), np.ones(3)).ok


@pytest.mark.parametrize("h", [0.0, -1e-6, np.nan, np.inf, "abc"])
def test_bad_step_is_a_user_error(h):
    with pytest.raises(UserError, match="step size"):
        central_difference(_f, np.ones(3), h)


@pytest.mark.parametrize("x", [[1.0, np.nan], [np.inf], []])
def test_bad_point_is_a_user_error(x):
    with pytest.raises(UserError, match="point x"):
        gradcheck(_f, _grad, x)


def test_non_finite_f_and_wrong_grad_size_are_user_errors():
    with pytest.raises(UserError, match="f returned"):
        central_difference(lambda v: np.inf if v[0] > 0 else 0.0, np.array([0.0]), 1e-6)
    with pytest.raises(UserError, match="grad_fn returned 2 values for 3 inputs"):
        gradcheck(_f, lambda v: np.zeros(2), np.ones(3))
