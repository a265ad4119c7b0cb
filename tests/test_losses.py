"""Losses and mesh regularizers: values against independent NumPy float64 references,
Tape gradients against float64 central differences, bad input."""

import itertools

import numpy as np
import pytest
import taichi as ti

from taichi_dr import UserError, icosphere, losses


def field_like(a: np.ndarray, vector: bool):
    """A float64 field holding ``a``: a vector field over all axes but the last, or scalar."""
    f = (
        ti.Vector.field(a.shape[-1], ti.f64, shape=a.shape[:-1], needs_grad=True)
        if vector
        else ti.field(ti.f64, shape=a.shape, needs_grad=True)
    )
    f.from_numpy(a)
    return f


def evaluate(loss, compute) -> float:
    loss[None] = 0.0
    compute()
    return loss[None]


def tape_grad(loss, compute, field) -> np.ndarray:
    with ti.ad.Tape(loss):
        compute()
    return field.grad.to_numpy()


def central_difference(loss, compute, field, h=1e-6) -> np.ndarray:
    """d loss / d field by central differences, perturbing one entry at a time via NumPy."""
    x = field.to_numpy()
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        field.from_numpy(x)
        up = evaluate(loss, compute)
        x[idx] = old - h
        field.from_numpy(x)
        down = evaluate(loss, compute)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    field.from_numpy(x)
    return g


def assert_gradcheck(loss, compute, field, rtol=1e-6):
    g = tape_grad(loss, compute, field)
    fd = central_difference(loss, compute, field)
    assert np.abs(fd).max() > 0
    err = np.linalg.norm(g - fd) / np.linalg.norm(fd)
    assert err <= rtol, f"relative gradient error {err:.2e}"


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("layout", ["vector", "scalar3", "scalar2"])
@pytest.mark.parametrize("masked", [False, True])
def test_image_loss_value_and_gradient(rng, kind, layout, masked):
    H, W = 4, 5
    shape = {"vector": (H, W, 3), "scalar3": (H, W, 3), "scalar2": (H, W)}[layout]
    a, b = rng.uniform(0, 1, shape), rng.uniform(0, 1, shape)
    m = rng.uniform(0, 1, (H, W))
    vector = layout == "vector"
    pred, target = field_like(a, vector), field_like(b, vector)
    mask = field_like(m, False) if masked else None
    loss = losses.loss_field()

    def compute():
        losses.image_loss(pred, target, loss, kind, mask=mask, weight=2.5)

    rho = np.abs(a - b) if kind == "l1" else (a - b) ** 2
    if masked:
        rho = rho * (m[..., None] if rho.ndim == 3 else m)
    assert evaluate(loss, compute) == pytest.approx(2.5 * rho.sum() / a.size, rel=1e-12)
    assert_gradcheck(loss, compute, pred)


def test_l1_gradient_at_zero_residual_is_zero():
    a = np.array([[0.5, 0.25]])
    pred, target = field_like(a, False), field_like(a, False)
    loss = losses.loss_field()
    g = tape_grad(loss, lambda: losses.l1_loss(pred, target, loss), pred)
    np.testing.assert_array_equal(g, 0.0)


def test_losses_accumulate_into_one_field(rng):
    a, b = rng.uniform(0, 1, (3, 3, 3)), rng.uniform(0, 1, (3, 3, 3))
    pred, target = field_like(a, True), field_like(b, True)
    loss = losses.loss_field()

    def compute():
        losses.mse_loss(pred, target, loss)
        losses.l1_loss(pred, target, loss, weight=0.5)

    want = ((a - b) ** 2).mean() + 0.5 * np.abs(a - b).mean()
    assert evaluate(loss, compute) == pytest.approx(want, rel=1e-12)


def test_soft_iou_value_and_gradient(rng):
    a, b = rng.uniform(0, 1, (6, 7)), rng.uniform(0, 1, (6, 7))
    pred, target = field_like(a, False), field_like(b, False)
    loss = losses.loss_field()
    iou = losses.SoftIoULoss()

    def compute():
        iou(pred, target, loss, weight=3.0)

    want = 3.0 * (1 - (a * b).sum() / ((a + b - a * b).sum() + 1e-6))
    assert evaluate(loss, compute) == pytest.approx(want, rel=1e-12)
    assert_gradcheck(loss, compute, pred)
    # identical hard silhouettes overlap perfectly
    same = field_like((a > 0.5).astype(float), False)
    assert evaluate(loss, lambda: iou(same, same, loss)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda p, q, r, lf: losses.mse_loss(p, q, lf), "different shapes"),
        (lambda p, q, r, lf: losses.l1_loss(p, r, lf), "different shapes"),
        (lambda p, q, r, lf: losses.SoftIoULoss()(p, q, lf), "different shapes"),
        (lambda p, q, r, lf: losses.image_loss(p, p, lf, kind="l3"), "unknown image loss"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, lf, weight=float("nan")), "finite"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, lf, weight="heavy"), "finite"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, lf, mask=q), "mask"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, p), "0-d scalar field"),
        (lambda p, q, r, lf: losses.mse_loss(p, np.zeros((4, 4)), lf), "Taichi field"),
    ],
)
def test_image_loss_bad_input(call, words):
    p = ti.field(ti.f64, shape=(4, 4), needs_grad=True)
    q = ti.field(ti.f64, shape=(4, 5), needs_grad=True)
    r = ti.Vector.field(3, ti.f64, shape=(4, 4), needs_grad=True)
    with pytest.raises(UserError, match=words):
        call(p, q, r, losses.loss_field())


# --------------------------------------------------------------------------- mesh


@pytest.fixture(scope="module")
def sphere():
    """A perturbed icosphere (42 vertices, 80 faces) in a field with 3 spare slots."""
    mesh = icosphere(1)
    rng = np.random.default_rng(7)
    v = mesh.vertices * rng.uniform(0.8, 1.2, (mesh.num_vertices, 1))
    return v, mesh.faces.astype(np.int64)


def mesh_fields(v, f, spare=3):
    pos = ti.Vector.field(3, ti.f64, shape=len(v) + spare, needs_grad=True)
    pos.from_numpy(np.vstack([v, np.full((spare, 3), 9.0)]))
    faces = ti.Vector.field(3, ti.i32, shape=len(f) + spare)
    faces.from_numpy(np.vstack([f, np.zeros((spare, 3), np.int64)]).astype(np.int32))
    return pos, faces


def neighbours(f):
    nb = {}
    for tri in f:
        for i, j in itertools.permutations(tri, 2):
            nb.setdefault(int(i), set()).add(int(j))
    return nb


def ref_uniform_laplacian(v, f):
    nb = neighbours(f)
    return np.mean([np.sum((v[list(nb[i])].mean(0) - v[i]) ** 2) for i in range(len(v))])


def cot(p, q, r):
    """Cotangent of the angle at p in triangle p, q, r."""
    a, b = q - p, r - p
    return np.dot(a, b) / np.linalg.norm(np.cross(a, b))


def ref_cotangent_laplacian(v, f):
    w = {}
    for tri in f:
        for c in range(3):
            o, i, j = tri[c], tri[(c + 1) % 3], tri[(c + 2) % 3]
            for key in ((i, j), (j, i)):
                w[key] = w.get(key, 0.0) + cot(v[o], v[i], v[j])
    total = 0.0
    for i in range(len(v)):
        row = {j: wij for (k, j), wij in w.items() if k == i}
        mean = sum(wij * v[j] for j, wij in row.items()) / sum(row.values())
        total += np.sum((mean - v[i]) ** 2)
    return total / len(v)


def ref_edge_length(v, f, target):
    edges = {
        tuple(sorted((int(a), int(b)))) for tri in f for a, b in itertools.combinations(tri, 2)
    }
    return np.mean([(np.linalg.norm(v[a] - v[b]) - target) ** 2 for a, b in edges])


def ref_normal_consistency(v, f):
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    faces_of = {}
    for k, tri in enumerate(f):
        for a, b in itertools.combinations(tri, 2):
            faces_of.setdefault(tuple(sorted((int(a), int(b)))), []).append(k)
    cos = [np.dot(n[p], n[q]) for fs in faces_of.values() for p, q in itertools.combinations(fs, 2)]
    return np.mean(1 - np.array(cos))


@pytest.mark.parametrize(
    "make, reference",
    [
        (lambda p, fa, V, F: losses.LaplacianLoss(p, fa, V, F), ref_uniform_laplacian),
        (
            lambda p, fa, V, F: losses.LaplacianLoss(p, fa, V, F, kind="cotangent"),
            ref_cotangent_laplacian,
        ),
        (
            lambda p, fa, V, F: losses.EdgeLengthLoss(p, fa, V, F),
            lambda v, f: ref_edge_length(v, f, 0),
        ),
        (
            lambda p, fa, V, F: losses.EdgeLengthLoss(p, fa, V, F, target_length=0.3),
            lambda v, f: ref_edge_length(v, f, 0.3),
        ),
        (lambda p, fa, V, F: losses.NormalConsistencyLoss(p, fa, V, F), ref_normal_consistency),
    ],
    ids=["uniform-laplacian", "cotangent-laplacian", "edge", "edge-target", "normal-consistency"],
)
def test_mesh_regularizer_value_and_gradient(sphere, make, reference):
    v, f = sphere
    pos, faces = mesh_fields(v, f)
    reg = make(pos, faces, len(v), len(f))
    loss = losses.loss_field()

    def compute():
        reg(loss, weight=1.5)

    assert evaluate(loss, compute) == pytest.approx(1.5 * reference(v, f), rel=1e-10)
    assert_gradcheck(loss, compute, pos)
    assert np.all(pos.grad.to_numpy()[len(v) :] == 0)  # spare slots untouched


def test_normal_consistency_is_winding_independent_and_handles_nonmanifold_edges():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0.5], [0.5, 0.5, 1.0]], float)
    f = np.array([[0, 1, 2], [0, 3, 1], [1, 0, 4]])  # edge 0-1 has three faces
    flipped = f.copy()
    flipped[1] = flipped[1, ::-1]  # same surface, one face wound the other way
    pos, _ = mesh_fields(v, f, spare=0)
    loss = losses.loss_field()
    values = [
        evaluate(loss, lambda g=g: losses.NormalConsistencyLoss(pos, g)(loss)) for g in (f, flipped)
    ]
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    # the three pairs around edge 0-1, each pair's faces oriented consistently with each other
    opposite = [2, 3, 4]
    e = v[1] - v[0]
    normals = [np.cross(e, v[a] - v[0]) for a in opposite]
    cos = [
        -np.dot(normals[i], normals[j]) / np.linalg.norm(normals[i]) / np.linalg.norm(normals[j])
        for i, j in itertools.combinations(range(3), 2)
    ]
    assert values[0] == pytest.approx(np.mean(1 - np.array(cos)), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_vertices=50), "num_vertices"),
        (dict(num_faces=0), "num_faces"),
        (dict(num_vertices=10), "outside"),
        (dict(kind="harmonic"), "unknown Laplacian"),
        (dict(faces=np.zeros((4, 2))), "expected \\(F, 3\\)"),
        (dict(positions="x"), "3-vector field"),
    ],
)
def test_mesh_regularizer_bad_input(sphere, kwargs, words):
    v, f = sphere
    pos, _ = mesh_fields(v, f, spare=0)
    args = dict(positions=pos, faces=f)
    args.update(kwargs)
    with pytest.raises(UserError, match=words):
        losses.LaplacianLoss(**args)
