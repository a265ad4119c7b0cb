"""k-d tree (taichi_dr.discrete.kdtree): neighbours against scipy's cKDTree and a float64
brute force (ties: smallest index), closest points on meshes against trimesh's per-triangle
closest point, bad input, and float64 central-difference gradchecks of ChamferLoss and
PointMeshLoss away from the switching sets."""

import numpy as np
import pytest
import taichi as ti
import trimesh
from scipy.spatial import cKDTree

from taichi_dr import losses
from taichi_dr.ad import gradcheck
from taichi_dr.discrete import KDTree, TriangleTree
from taichi_dr.discrete.kdtree import LEAF_SIZE, MAX_K
from taichi_dr.errors import UserError
from taichi_dr.render import arrays


def brute_force(points, x, k):
    """k nearest by a stable sort of the float64 squared distances: (distance, index)
    ascending, equal distances by index."""
    d2 = ((np.asarray(x)[:, None, :] - np.asarray(points)[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, order, axis=1)), order


def clouds(rng):
    """Uniform points, points on a sphere (a surface, like sampled meshes) and clusters."""
    u = rng.random((3000, 3))
    s = rng.normal(size=(3000, 3))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    c = rng.normal(size=(30, 1, 3)) + 0.01 * rng.normal(size=(30, 100, 3))
    return {"uniform": u, "sphere": s, "clusters": c.reshape(-1, 3)}


@pytest.mark.parametrize("k", [1, 4])
def test_same_neighbours_as_scipy(rng, k):
    for name, points in clouds(rng).items():
        x = points[rng.integers(0, len(points), 500)] + 0.05 * rng.normal(size=(500, 3))
        d, i = KDTree(points).query(x, k=k)
        d_ref, i_ref = cKDTree(points).query(x, k=k)
        np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-15, err_msg=name)
        np.testing.assert_array_equal(i, i_ref, err_msg=name)  # no ties in random floats


@pytest.mark.parametrize("n", [1, 2, LEAF_SIZE, LEAF_SIZE + 1, 3 * LEAF_SIZE + 2, 1000])
def test_every_size_against_brute_force(rng, n):
    points = rng.random((n, 3))
    x = rng.random((64, 3)) * 1.4 - 0.2
    k = 1 if n < 4 else 4  # few values of k: each compiles its own query kernel
    d, i = KDTree(points).query(x, k=k)
    d_ref, i_ref = brute_force(points, x, k)
    if k == 1:
        d_ref, i_ref = d_ref[:, 0], i_ref[:, 0]
    np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(i, i_ref)


def test_ties_go_to_the_smallest_index(rng):
    """Duplicated points and an integer lattice queried at lattice points and cell centres
    (up to 8 equidistant neighbours): same distances as scipy, and exactly the brute-force
    order (distance, then index), which scipy does not promise."""
    lattice = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    points = np.concatenate([lattice, lattice[rng.permutation(len(lattice))[:50]]])
    x = np.concatenate([lattice[::7], lattice[::5] + 0.5])
    for k in (1, 4):
        d, i = KDTree(points).query(x, k=k)
        d_ref, i_ref = brute_force(points, x, k)
        d_sp = cKDTree(points).query(x, k=k)[0]
        np.testing.assert_array_equal(d.reshape(d_ref.shape), d_ref)
        np.testing.assert_array_equal(i.reshape(i_ref.shape), i_ref)
        np.testing.assert_allclose(d, d_sp, rtol=1e-15)
    d, i = KDTree(np.zeros((20, 3))).query(np.ones((3, 3)), k=4)
    np.testing.assert_array_equal(i, np.tile(np.arange(4), (3, 1)))  # all tied: by index


def test_closest_point_on_mesh_matches_per_triangle_reference(rng):
    mesh = trimesh.creation.icosphere(2)
    v, f = mesh.vertices * [1.0, 0.6, 1.3], mesh.faces
    x = rng.normal(size=(200, 3)) * 0.9  # inside and outside
    d2, face, bary = TriangleTree(v, f).closest(x)
    tri = v[f]
    ref = trimesh.triangles.closest_point(
        np.repeat(tri[None], len(x), 0).reshape(-1, 3, 3), np.repeat(x, len(f), 0)
    ).reshape(len(x), len(f), 3)
    d_all = ((ref - x[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, d_all.min(1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d_all[np.arange(len(x)), face], d2, rtol=1e-10, atol=1e-14)
    assert np.all(bary >= -1e-12) and np.allclose(bary.sum(1), 1)
    point = np.einsum("mc,mcd->md", bary, tri[face])
    np.testing.assert_allclose(((point - x) ** 2).sum(1), d2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: KDTree(np.zeros((0, 3))), "empty"),
        (lambda: KDTree([[0, 0, 0], [1, np.nan, 0]]), "NaN/inf coordinates (first: row 1)"),
        (lambda: KDTree(np.zeros((4, 2))), "shape (N, 3)"),
        (lambda: KDTree(np.zeros((4, 3))).query(np.zeros((1, 3)), k=5), "larger than the 4"),
        (lambda: KDTree(np.zeros((4, 3))).query(np.zeros((1, 3)), k=0), "k must be"),
        (lambda: KDTree(np.zeros((64, 3))).query(np.zeros((1, 3)), k=MAX_K + 1), "k must be"),
        (lambda: KDTree(np.zeros((4, 3))).query([[0, np.inf, 0]]), "query points have 1"),
        (lambda: TriangleTree(np.zeros((3, 3)), [[0, 1, 3]]), "face indices"),
    ],
)
def test_bad_input_is_a_one_line_error(make, message):
    with pytest.raises(UserError, match=None) as info:
        make()
    text = str(info.value)
    assert message in text and "\n" not in text


def _field(points, grad=True):
    """A (N,) 3-vector Taichi ndarray holding ``points`` (with gradients)."""
    return arrays.from_numpy(points, grad=grad)


def test_chamfer_loss_value_and_gradcheck(rng):
    """Value against scipy; gradients in a and b against float64 central differences at
    random clouds (the test checks the recorded neighbours do not switch within ±h)."""
    a0, b0 = rng.random((13, 3)), rng.random((9, 3))
    a, b = _field(a0), _field(b0)
    loss = losses.loss_array()
    chamfer = losses.ChamferLoss(a, b)

    def value(x):
        a.from_numpy(x[:13])
        b.from_numpy(x[13:])
        loss[None] = 0
        chamfer(loss, weight=2.0)
        return loss[None]

    x0 = np.concatenate([a0, b0])
    ref = cKDTree(b0).query(a0)[0] ** 2, cKDTree(a0).query(b0)[0] ** 2
    assert value(x0) == pytest.approx(ref[0].mean() + ref[1].mean(), rel=1e-12)
    pairs = chamfer.nearest_a.copy(), chamfer.nearest_b.copy()

    def grad(x):
        value(x)
        arrays.clear_grads(a, b)  # a tape clears fields' gradients, not ndarrays'
        with ti.ad.Tape(loss):
            chamfer(loss, weight=2.0)
        return np.concatenate([a.grad.to_numpy(), b.grad.to_numpy()])

    g = grad(x0)
    assert np.abs(g).max() > 1e-2
    result = gradcheck(value, grad, x0, h=1e-6, rtol=1e-7, atol=1e-9)
    assert result.ok, result
    for sign in (1, -1):  # away from switching points: the pairs hold within ±h
        value(x0 + sign * 1e-6)
        np.testing.assert_array_equal(chamfer.nearest_a, pairs[0])
        np.testing.assert_array_equal(chamfer.nearest_b, pairs[1])


def test_chamfer_loss_to_fixed_array_leaves_it_alone(rng):
    a = _field(rng.random((10, 3)))
    target = rng.random((7, 3))
    loss = losses.loss_array()
    chamfer = losses.ChamferLoss(a, target)
    with ti.ad.Tape(loss):
        chamfer(loss)
    diff = a.to_numpy()[:, None] - target[None]
    d2 = (diff**2).sum(-1)
    expect = 0.5 * d2.min(1).mean() + 0.5 * d2.min(0).mean()
    assert loss[None] == pytest.approx(expect, rel=1e-12)
    assert np.abs(a.grad.to_numpy()).max() > 0


def test_point_mesh_loss_gradcheck(rng):
    """d/d(points, vertices) of the mean squared distance to a mesh surface against float64
    central differences (faces and barycentrics recorded; envelope theorem)."""
    mesh = trimesh.creation.icosphere(1)
    v0, faces = mesh.vertices * [1.0, 0.7, 1.2], mesh.faces
    p0 = rng.normal(size=(12, 3))
    p0 *= (0.6 + 0.8 * rng.random((12, 1))) / np.linalg.norm(p0, axis=1, keepdims=True)
    p, v = _field(p0), _field(v0)
    loss = losses.loss_array()
    term = losses.PointMeshLoss(p, v, faces)
    n = len(p0)

    def value(x):
        p.from_numpy(x[:n])
        v.from_numpy(x[n:])
        loss[None] = 0
        term(loss, weight=3.0)
        return loss[None]

    def grad(x):
        value(x)
        arrays.clear_grads(p, v)
        with ti.ad.Tape(loss):
            term(loss, weight=3.0)
        return np.concatenate([p.grad.to_numpy(), v.grad.to_numpy()])

    x0 = np.concatenate([p0, v0])
    g = grad(x0)
    assert np.abs(g[:n]).max() > 1e-2 and np.abs(g[n:]).max() > 1e-2
    result = gradcheck(value, grad, x0, h=1e-6, rtol=1e-6, atol=1e-8)
    assert result.ok, result


def test_point_set_losses_refuse_bad_clouds():
    loss = losses.loss_array()
    a = _field(np.zeros((3, 3)))
    with pytest.raises(UserError, match="empty"):
        losses.ChamferLoss(a, np.zeros((0, 3)))
    with pytest.raises(UserError, match="NaN/inf"):
        a.from_numpy(np.array([[0, 0, 0], [np.nan, 0, 0], [1, 1, 1]], float))
        losses.ChamferLoss(a, np.ones((2, 3)))(loss)
    with pytest.raises(UserError, match="count 4 outside"):
        losses.ChamferLoss(a, np.ones((2, 3)), num_a=4)
