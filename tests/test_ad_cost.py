"""The cheap-gradient principle: gradients by every mode are right, and reverse mode costs a
bounded multiple of one evaluation while forward mode grows with n (ratios in one run)."""

import numpy as np
import pytest

from taichi_dr import UserError
from taichi_dr.ad.cost import RingProduct, cost_study, measure


@pytest.mark.parametrize("n", [1, 2, 9])
def test_all_modes_give_the_analytic_gradient(rng, n):
    prog = RingProduct(n)
    x = rng.uniform(-2, 2, size=n)
    prog.set_x(x)
    value = np.sum(np.sin(x) * np.cos(np.roll(x, -1)))
    assert prog.value() == pytest.approx(value, rel=1e-13)
    exact = np.cos(x) * np.cos(np.roll(x, -1)) - np.sin(np.roll(x, 1)) * np.sin(x)
    assert np.allclose(prog.grad_exact(), exact)
    assert np.allclose(prog.grad_reverse(), exact, rtol=1e-12, atol=1e-14)
    assert np.allclose(prog.grad_reverse(), exact, rtol=1e-12, atol=1e-14)  # no accumulation
    assert np.allclose(prog.grad_forward(), exact, rtol=1e-12, atol=1e-14)
    assert np.allclose(prog.grad_central(), exact, rtol=1e-7, atol=1e-9)
    assert np.array_equal(prog.x.to_numpy(), x)  # central differences restore x


def test_reverse_cost_is_bounded_forward_cost_grows():
    small, mid = measure(16, central=False), measure(256, central=False)
    # loose bounds (timings are noisy on a shared 2-core box): reverse/eval is a small
    # constant (~2-5 measured); forward does n passes, so 16x the inputs gives >> 2x the ratio
    assert mid.ratio(mid.reverse_s) < 20
    assert mid.ratio(mid.forward_s) > 2 * small.ratio(small.forward_s)
    assert mid.ratio(mid.forward_s) > 5 * mid.ratio(mid.reverse_s)


def test_cost_study_skips_forward_above_the_limit():
    rows = cost_study(sizes=(1, 4), max_forward_n=1)
    assert [r.n for r in rows] == [1, 4]
    assert rows[0].forward_s is not None and rows[1].forward_s is None
    assert rows[1].central_s is None and rows[1].reverse_s > 0


@pytest.mark.parametrize("n", [0, -3, 2.5, "8"])
def test_bad_n_is_a_user_error(n):
    with pytest.raises(UserError, match="n must be an integer ≥ 1"):
        RingProduct(n)


def test_bad_x_is_a_user_error():
    prog = RingProduct(3)
    with pytest.raises(UserError, match=r"expected \(3,\)"):
        prog.set_x(np.ones(4))
    with pytest.raises(UserError, match="NaN or inf"):
        prog.set_x([0.0, np.inf, 1.0])
