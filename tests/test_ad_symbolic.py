import numpy as np
import pytest

from taichi_dr import UserError
from taichi_dr.ad import examples

sympy = pytest.importorskip("sympy", reason="sympy not installed (pip install '.[symbolic]')")

from taichi_dr.ad import symbolic  # noqa: E402


def test_symbolic_derivative_swells_quadratically_algorithmic_stays_linear():
    rows = symbolic.swell_study(range(1, 9))
    for r in rows:
        k = r.k
        assert r.function_ops == k
        # the tree exp(x)·exp(exp(x))⋯: k(k+1)/2 exps and k−1 products
        assert r.symbolic_ops == k * (k + 1) // 2 + k - 1
        # per step one exp and one multiply (the first multiply, 1·r1, is free)
        assert r.algorithmic_ops == 2 * k - 1
        assert r.symbolic_cse_ops <= r.algorithmic_ops
    second_diff = np.diff([r.symbolic_ops for r in rows], 2)
    assert np.all(second_diff == 1) and np.all(np.diff([r.algorithmic_ops for r in rows], 2) == 0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_symbolic_and_algorithmic_derivatives_agree_with_chain_rule(k):
    x, _, df = symbolic.symbolic_derivative(k)
    x0 = -0.4
    _, ref = examples.exp_chain_grad(x0, k)
    assert float(df.subs(x, x0)) == pytest.approx(ref, rel=1e-12)
    assert symbolic.evaluate_program(symbolic.algorithmic_program(k), x0) == pytest.approx(
        ref, rel=1e-12
    )


def test_bad_k_is_a_user_error():
    with pytest.raises(UserError, match="k=0"):
        symbolic.swell_study([0])
