"""The seed's examples as Taichi kernels (f64, cpu): every differentiation path against the
chain rule, and the Taichi 1.7.4 exp-in-a-loop reverse-mode bug recorded."""

import numpy as np
import pytest

from taichi_dr import UserError
from taichi_dr.ad import examples
from taichi_dr.ad.gradcheck import central_difference
from taichi_dr.ad.programs import METHODS, Chain2x2, ExpLoop

SAFE = [m for m in METHODS if m != "tape-exp"]


@pytest.fixture(scope="module")
def loop():
    return ExpLoop(capacity=8)


@pytest.fixture(scope="module")
def chain():
    return Chain2x2()


@pytest.mark.parametrize("method", SAFE)
@pytest.mark.parametrize("x, n", [(0.1, 3), (0.0, 3), (-1.2, 2), (0.4, 1)])
def test_safe_paths_match_product_of_intermediates(loop, method, x, n):
    value, grad = loop.value_and_grad(x, n, method)
    ref_value, ref_grad = examples.exp_chain_grad(x, n)
    assert value == pytest.approx(ref_value, rel=1e-14)
    assert grad == pytest.approx(ref_grad, rel=1e-12)


def test_taichi_exp_loop_bug_still_present(loop):
    """Taichi 1.7.4 reverse mode of exp in a runtime loop nested in the top-level loop reuses
    the last iteration's result: dy/dx = y**n instead of r1*r2*r3. If this test fails, an
    upstream fix landed: revisit the workarounds (TAICHI_NOTES §6) and this test."""
    for x, right, wrong in [
        (0.1, 68.368450691512, 8597.45629497904),
        (0.0, 41.1935556747, 3480.2015417),
    ]:
        y, grad = loop.value_and_grad(x, 3, "tape-exp")
        assert y == pytest.approx(examples.exp_chain_grad(x, 3)[0], rel=1e-14)  # forward is right
        assert grad == pytest.approx(y**3, rel=1e-12)  # the bug's signature
        assert grad == pytest.approx(wrong, rel=1e-9) and grad != pytest.approx(right, rel=0.5)
        for method in SAFE:  # the project's safe paths give the right value
            assert loop.value_and_grad(x, 3, method)[1] == pytest.approx(right, rel=1e-9)


def test_reverse_mode_agrees_with_float64_central_differences(loop):
    x = 0.3
    fd = central_difference(lambda v: loop.value_and_grad(float(v[0]), 3, "stack")[0], [x])[0]
    assert loop.value_and_grad(x, 3, "tape-pow")[1] == pytest.approx(fd, rel=1e-7)


@pytest.mark.parametrize("x", [0.05, 0.1, 0.1000001, 0.5, 2.0, 9.0, 9.99, 12.0])
def test_while_loop_with_stack(loop, x):
    value, grad, steps = loop.while_value_and_grad(x)
    ref_value, ref_grad, ref_steps = examples.exp_while_grad(x)
    assert steps == ref_steps and loop.top[None] == 0  # the reverse loop popped everything
    assert value == pytest.approx(ref_value, rel=1e-14)
    assert grad == pytest.approx(ref_grad, rel=1e-12)


def test_while_loop_overflow_is_reported():
    small = ExpLoop(capacity=1)
    assert small.while_value_and_grad(9.0)[2] == 1
    with pytest.raises(UserError, match="did not end within 1 steps"):
        small.while_value_and_grad(0.5)


@pytest.mark.parametrize("x", [[0.3, 0.7], [-1.1, 0.4], [0.0, 0.0]])
def test_jacobian_forward_equals_reverse_equals_analytic(chain, x):
    w_fwd, j_fwd = chain.jacobian_forward(x)
    w_rev, j_rev = chain.jacobian_reverse(x)
    assert np.allclose(w_fwd, examples.chain_2x2(*x), rtol=1e-14)
    assert np.allclose(w_rev, w_fwd, rtol=1e-14)
    exact = examples.chain_2x2_jacobian(*x)
    assert np.allclose(j_fwd, exact, rtol=1e-12, atol=1e-14)
    assert np.allclose(j_rev, exact, rtol=1e-12, atol=1e-14)


def test_jacobian_passes_do_not_accumulate(chain):
    first = chain.jacobian_forward([0.3, 0.7])[1]
    assert np.array_equal(chain.jacobian_forward([0.3, 0.7])[1], first)
    first = chain.jacobian_reverse([0.3, 0.7])[1]
    assert np.array_equal(chain.jacobian_reverse([0.3, 0.7])[1], first)


@pytest.mark.parametrize(
    "x, n, method, match",
    [
        (0.1, 0, "stack", "n=0"),
        (0.1, 9, "stack", r"\[1, 8\]"),
        (0.1, 2.0, "stack", "integer"),
        (np.nan, 3, "stack", "NaN or inf"),
        (np.inf, 3, "fwdmode", "NaN or inf"),
        ([0.1, 0.2], 3, "stack", "one number"),
        (0.1, 3, "magic", "unknown method"),
    ],
)
def test_bad_input_is_a_user_error(loop, x, n, method, match):
    with pytest.raises(UserError, match=match):
        loop.value_and_grad(x, n, method)


def test_bad_chain_input(chain, loop):
    with pytest.raises(UserError, match="2 numbers"):
        chain.jacobian_forward([1.0, 2.0, 3.0])
    with pytest.raises(UserError, match="NaN or inf"):
        chain.jacobian_reverse([1.0, np.nan])
    with pytest.raises(UserError, match="NaN or inf"):
        loop.while_value_and_grad(np.nan)
