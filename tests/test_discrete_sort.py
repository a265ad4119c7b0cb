"""Stable sort by key (taichi_dr.discrete.sort): order against NumPy's stable argsort with
ties, the counting pass and prefix sum it is built from, and the gather's backward
(scatter through the permutation) against float64 central differences."""

import numpy as np
import pytest
import taichi as ti

from taichi_dr import UserError
from taichi_dr.ad import gradcheck
from taichi_dr.discrete import argsort, counting_pass, exclusive_scan, gather, scatter, sort_by_key
from taichi_dr.discrete.sort import BLOCK, SERIAL_SCAN


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 9, 3 * BLOCK + 17])
def test_argsort_is_numpys_stable_argsort(dtype, n, rng):
    ties = rng.integers(-20, 20, n).astype(dtype)  # many equal keys
    if np.dtype(dtype).kind == "i":
        spread = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, n, dtype=dtype)
    else:
        spread = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(dtype)
    for keys in (ties, spread):
        np.testing.assert_array_equal(argsort(keys), np.argsort(keys, kind="stable"))


def test_argsort_signed_zero_and_infinities():
    keys = np.array([0.0, -0.0, 1.0, -0.0, np.inf, -np.inf, -1e-300, 1e-300, 0.0])
    np.testing.assert_array_equal(argsort(keys), np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(
        argsort(keys.astype(np.float32)), np.argsort(keys.astype(np.float32), kind="stable")
    )


def test_argsort_torch_tensor_gives_torch_perm():
    torch = pytest.importorskip("torch")
    keys = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0])
    perm = argsort(keys)
    assert isinstance(perm, torch.Tensor) and perm.dtype == torch.int32
    assert perm.tolist() == [1, 4, 3, 0, 2]


@pytest.mark.parametrize("n", [2 * BLOCK + 5, SERIAL_SCAN + 3 * BLOCK + 1])  # serial, blocked
def test_exclusive_scan_in_place_and_out_of_place(rng, n):
    a = rng.integers(0, 9, n).astype(np.int32)
    expected, total = np.cumsum(a) - a, a.sum()
    out = np.empty_like(a)
    assert exclusive_scan(a, a.size, out) == total
    np.testing.assert_array_equal(out, expected)
    assert exclusive_scan(a, a.size) == total
    np.testing.assert_array_equal(a, expected)


def test_counting_pass_buckets_are_stable_with_ranges(rng):
    n, buckets = 5 * BLOCK, 37
    keys = rng.integers(0, buckets, n).astype(np.int32)
    values = rng.permutation(n).astype(np.int32)
    out = np.empty_like(values)
    starts = counting_pass(keys, values, n, 0, -1, buckets, out)
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(out, values[order])
    np.testing.assert_array_equal(
        starts, np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=buckets))])
    )


def test_sort_by_key_numpy(rng):
    keys = rng.integers(0, 5, 40).astype(np.float64)
    values = rng.standard_normal((40, 2, 3))
    sk, sv, perm = sort_by_key(keys, values)
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(perm, order)
    np.testing.assert_array_equal(sk, keys[order])
    np.testing.assert_array_equal(sv, values[order])


def test_sort_by_key_torch_gradcheck_float64():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(12, dtype=torch.float64, generator=g, requires_grad=True)
    values = torch.randn(12, 3, dtype=torch.float64, generator=g, requires_grad=True)

    def f(k, v):
        sk, sv, _ = sort_by_key(k, v)
        return sk, sv

    assert torch.autograd.gradcheck(f, (keys, values))
    _, sv, perm = sort_by_key(keys, values)
    w = torch.randn(12, 3, dtype=torch.float64, generator=g)
    (sv * w).sum().backward()
    expected = torch.zeros_like(values)
    expected[perm.long()] = w
    assert torch.equal(values.grad, expected)


def test_sort_derivative_at_a_tie_is_one_sided():
    """Keys 3 and 7 tie; the stable order puts 3 first, which is the order when key 3 is
    moved down: the derivative is the backward difference, not the central one."""
    torch = pytest.importorskip("torch")
    keys = torch.tensor([0.5, 2.0, -1.0, 1.0, 3.0, 0.0, -2.0, 1.0], dtype=torch.float64)
    w = torch.arange(1.0, 9.0, dtype=torch.float64)

    def loss(k):
        return float((sort_by_key(k, k)[0] * w).sum())

    k = keys.clone().requires_grad_(True)
    (sort_by_key(k, k)[0] * w).sum().backward()
    h = 1e-6
    down, up = keys.clone(), keys.clone()
    down[3] -= h
    up[3] += h
    backward_diff = (loss(keys) - loss(down)) / h
    forward_diff = (loss(up) - loss(keys)) / h
    assert k.grad[3].item() == pytest.approx(backward_diff, abs=1e-6)
    assert abs(k.grad[3].item() - forward_diff) > 0.5


def test_gather_tape_adjoint_matches_central_differences(rng):
    n, m = 9, 2
    keys = rng.integers(0, 4, n).astype(np.int32)
    perm = argsort(keys)
    weights = rng.standard_normal((n, m))
    src = ti.ndarray(ti.f64, (n, m), needs_grad=True)
    dst = ti.ndarray(ti.f64, (n, m), needs_grad=True)
    loss = ti.ndarray(ti.f64, (), needs_grad=True)
    w = ti.ndarray(ti.f64, (n, m))
    w.from_numpy(weights)

    @ti.kernel
    def weighted_sum(d: ti.types.ndarray(), w: ti.types.ndarray(), loss: ti.types.ndarray()):
        for i, j in ti.ndrange(n, m):
            loss[None] += d[i, j] ** 2 * w[i, j]

    def f(x):
        return float((x.reshape(n, m)[perm] ** 2 * weights).sum())

    def grad(x):
        src.from_numpy(x.reshape(n, m))
        loss[None] = 0.0
        with ti.ad.Tape(loss=loss):
            gather(src, perm, dst)
            weighted_sum(dst, w, loss)
        return src.grad.to_numpy()

    x = rng.standard_normal(n * m)
    assert gradcheck(f, grad, x, rtol=1e-7, atol=1e-9).ok
    np.testing.assert_allclose(dst.to_numpy(), x.reshape(n, m)[perm])


def test_scatter_is_the_inverse_permutation(rng):
    perm = rng.permutation(20).astype(np.int32)
    g = rng.standard_normal((20, 4))
    out = scatter(g, perm)
    np.testing.assert_array_equal(out[perm], g)


@pytest.mark.parametrize(
    "keys, match",
    [
        (np.array([1.0, np.nan]), "NaN"),
        (np.zeros((2, 2)), "1-D"),
        (np.array([True, False]), "not supported"),
    ],
)
def test_bad_keys(keys, match):
    with pytest.raises(UserError, match=match):
        argsort(keys)


def test_sort_by_key_length_mismatch():
    with pytest.raises(UserError, match="one per key"):
        sort_by_key(np.zeros(3), np.zeros(4))
