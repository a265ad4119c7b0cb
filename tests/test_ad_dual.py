import math

import numpy as np
import pytest

from taichi_dr.ad import dual, examples
from taichi_dr.ad.gradcheck import central_difference


def test_dual_arithmetic_rules():
    a, b = dual.Dual(1.5, 1.0), dual.Dual(-0.7, 0.0)  # d/da
    for expr, value, deriv in [
        (a + b, 0.8, 1.0),
        (2 - a, 0.5, -1.0),
        (a * b, -1.05, -0.7),
        (a / b, 1.5 / -0.7, 1 / -0.7),
        (1 / a, 1 / 1.5, -1 / 1.5**2),
        (a**2.5, 1.5**2.5, 2.5 * 1.5**1.5),
        (-a * 3, -4.5, -3.0),
    ]:
        assert expr.val == pytest.approx(value) and expr.eps == pytest.approx(deriv)


@pytest.mark.parametrize(
    "fn, d", [(dual.exp, math.exp), (dual.sin, math.cos), (dual.cos, lambda v: -math.sin(v))]
)
def test_elementary_functions_and_floats(fn, d):
    y = fn(dual.Dual(0.3, 2.0))
    assert y.eps == pytest.approx(2.0 * d(0.3))
    assert isinstance(fn(0.3), float)
    assert dual.log(dual.Dual(2.0, 1.0)).eps == pytest.approx(0.5)


@pytest.mark.parametrize("x", [0.1, 0.0, -1.3])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_derivative_of_exp_chain_is_product_of_results(x, k):
    value, d = dual.derivative(lambda v: examples.exp_chain(v, k), x)
    ref_value, ref_d = examples.exp_chain_grad(x, k)
    fd = central_difference(lambda v: examples.exp_chain(v[0], k), np.array([x]))[0]
    assert value == pytest.approx(ref_value, rel=1e-14)
    assert d == pytest.approx(ref_d, rel=1e-13) and d == pytest.approx(fd, rel=1e-7)


def test_exp_chain_values_from_the_seed():
    assert examples.exp_chain_grad(0.1, 3) == pytest.approx((20.485975968526, 68.368450691512))
    assert examples.exp_chain_grad(0.0, 3)[1] == pytest.approx(41.193555674716)


@pytest.mark.parametrize("x", [0.05, 0.11, 0.5, 2.0, 9.0])
def test_while_variant_derivative(x):
    _, d = dual.derivative(examples.exp_while, x)
    value, ref, steps = examples.exp_while_grad(x)
    assert d == pytest.approx(ref, rel=1e-13)
    assert steps == 0 or not (examples.WHILE_LOW < value < examples.WHILE_HIGH)
    if steps:  # away from the switching points the count is locally constant: FD applies
        fd = central_difference(lambda v: examples.exp_while(v[0]), np.array([x]), 1e-7)[0]
        assert d == pytest.approx(fd, rel=1e-6)


def test_jacobian_2x2_one_pass_per_input_matches_analytic_and_fd():
    x = np.array([0.3, 0.7])
    value, jac = dual.jacobian(examples.chain_2x2, x)
    assert np.allclose(value, examples.chain_2x2(*x))
    assert np.allclose(jac, examples.chain_2x2_jacobian(*x), rtol=1e-13)
    for i in range(2):
        fd = central_difference(lambda v, i=i: examples.chain_2x2(*v)[i], x)
        assert np.allclose(jac[i], fd, rtol=1e-7)
