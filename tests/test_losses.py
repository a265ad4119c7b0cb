"""Losses and mesh regularizers over arrays: values against independent NumPy float64
references, Tape gradients against float64 central differences, Taichi ndarrays / NumPy
arrays / torch tensors mixed, one compile for every size, bad input."""

import itertools

import numpy as np
import pytest
import taichi as ti

from taichi_dr import UserError, icosphere, losses


def array_like(a: np.ndarray, vector: bool):
    """A float64 Taichi ndarray with a gradient holding ``a``: flat, of vectors of the last
    axis's length (the renderer's image layout), or scalars of ``a``'s shape."""
    if vector:
        out = ti.ndarray(ti.types.vector(a.shape[-1], ti.f64), a.shape[:-1], needs_grad=True)
        out.from_numpy(a)
        return out
    out = ti.ndarray(ti.f64, a.shape, needs_grad=True)
    out.from_numpy(a)
    return out


def flat_vectors(a: np.ndarray):
    """``a`` (..., C) as a flat (n,) C-vector ndarray."""
    return array_like(a.reshape(-1, a.shape[-1]), True)


def evaluate(loss, compute) -> float:
    loss.fill(0.0)
    compute()
    return loss[None]


def tape_grad(loss, compute, array) -> np.ndarray:
    array.grad.fill(0.0)  # ndarray gradients accumulate; the Tape clears only the loss
    with ti.ad.Tape(loss=loss):
        compute()
    return array.grad.to_numpy()


def central_difference(loss, compute, array, h=1e-6) -> np.ndarray:
    """d loss / d array by central differences, perturbing one entry at a time via NumPy."""
    x = array.to_numpy()
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        array.from_numpy(x)
        up = evaluate(loss, compute)
        x[idx] = old - h
        array.from_numpy(x)
        down = evaluate(loss, compute)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    array.from_numpy(x)
    return g


def assert_gradcheck(loss, compute, array, rtol=1e-6):
    g = tape_grad(loss, compute, array)
    fd = central_difference(loss, compute, array)
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
    if layout == "vector":  # the renderer's flat (H·W,) vec3 images; an (H, W) mask
        pred, target = flat_vectors(a), flat_vectors(b)
    else:
        pred, target = array_like(a, False), array_like(b, False)
    mask = array_like(m, False) if masked else None
    loss = losses.loss_array()

    def compute():
        losses.image_loss(pred, target, loss, kind, mask=mask, weight=2.5)

    rho = np.abs(a - b) if kind == "l1" else (a - b) ** 2
    if masked:
        rho = rho * (m[..., None] if rho.ndim == 3 else m)
    assert evaluate(loss, compute) == pytest.approx(2.5 * rho.sum() / a.size, rel=1e-12)
    assert_gradcheck(loss, compute, pred)


def test_l1_gradient_at_zero_residual_is_zero():
    a = np.array([[0.5, 0.25]])
    pred, target = array_like(a, False), array_like(a, False)
    loss = losses.loss_array()
    g = tape_grad(loss, lambda: losses.l1_loss(pred, target, loss), pred)
    np.testing.assert_array_equal(g, 0.0)


def test_losses_accumulate_into_one_array(rng):
    a, b = rng.uniform(0, 1, (3, 3, 3)), rng.uniform(0, 1, (3, 3, 3))
    pred, target = flat_vectors(a), flat_vectors(b)
    loss = losses.loss_array()

    def compute():
        losses.mse_loss(pred, target, loss)
        losses.l1_loss(pred, target, loss, weight=0.5)

    want = ((a - b) ** 2).mean() + 0.5 * np.abs(a - b).mean()
    assert evaluate(loss, compute) == pytest.approx(want, rel=1e-12)


def test_soft_iou_value_and_gradient(rng):
    a, b = rng.uniform(0, 1, (6, 7)), rng.uniform(0, 1, (6, 7))
    pred, target = array_like(a.ravel(), False), array_like(b, False)  # flat against (H, W)
    loss = losses.loss_array()
    iou = losses.SoftIoULoss()

    def compute():
        iou(pred, target, loss, weight=3.0)

    want = 3.0 * (1 - (a * b).sum() / ((a + b - a * b).sum() + 1e-6))
    assert evaluate(loss, compute) == pytest.approx(want, rel=1e-12)
    assert_gradcheck(loss, compute, pred)
    # the sums' gradients are cleared by the Tape's reverse pass: a second Tape agrees
    np.testing.assert_array_equal(tape_grad(loss, compute, pred), tape_grad(loss, compute, pred))
    # identical hard silhouettes overlap perfectly
    same = array_like((a > 0.5).astype(float), False)
    assert evaluate(loss, lambda: iou(same, same, loss)) == pytest.approx(0.0, abs=1e-6)


def test_image_loss_mixes_ndarrays_numpy_and_torch(rng):
    torch = pytest.importorskip("torch")
    H, W = 3, 4
    a, b, m = rng.uniform(0, 1, (H, W, 3)), rng.uniform(0, 1, (H, W, 3)), rng.uniform(0, 1, (H, W))
    want = 0.5 * ((a - b) ** 2 * m[..., None]).mean()
    loss = losses.loss_array()
    # a flat vec3 ndarray against an (H, W, 3) NumPy target and an (H, W) tensor mask
    pred = flat_vectors(a)
    mask = torch.from_numpy(m)
    assert evaluate(loss, lambda: losses.mse_loss(pred, b, loss, mask, 0.5)) == pytest.approx(
        want, rel=1e-12
    )
    # a torch prediction with requires_grad: the gradient lands in its .grad, unreshaped
    t = torch.tensor(a, requires_grad=True)
    target = flat_vectors(b)
    with ti.ad.Tape(loss=loss):
        losses.mse_loss(t, target, loss, m.ravel(), 0.5)
    assert loss[None] == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(
        t.grad.numpy(), 0.5 * 2 * (a - b) * m[..., None] / a.size, rtol=1e-12, atol=1e-15
    )
    # per-value mask: as many weights as values
    w3 = rng.uniform(0, 1, (H, W, 3))
    got = evaluate(loss, lambda: losses.l1_loss(pred, target, loss, torch.from_numpy(w3)))
    assert got == pytest.approx((np.abs(a - b) * w3).mean(), rel=1e-12)


def test_image_loss_compiles_once_for_every_size(rng):
    kernel = losses._image_residual._primal
    loss = losses.loss_array()
    sizes = [(5, 7), (9, 4), (2, 3)]
    counts = []
    for H, W in sizes:
        a, b = rng.uniform(0, 1, (H, W, 3)), rng.uniform(0, 1, (H, W, 3))
        pred, target = flat_vectors(a), flat_vectors(b)
        value = evaluate(loss, lambda: losses.mse_loss(pred, target, loss))  # noqa: B023
        assert value == pytest.approx(((a - b) ** 2).mean(), rel=1e-12)
        counts.append(len(kernel.compiled_kernels))
    assert counts[1] == counts[0] == counts[2]  # the first size compiled (if new), no other


def test_copy_field_bridges_fields_to_losses(rng):
    """A field (the simulator's, the field-based stages') reaches the array losses through
    arrays.copy_field, gradients included, also on a second Tape."""
    from taichi_dr.render import arrays

    a, b = rng.uniform(0, 1, (3, 4, 3)), rng.uniform(0, 1, (3, 4, 3))
    field = ti.Vector.field(3, ti.f64, shape=(3, 4), needs_grad=True)
    field.from_numpy(a)
    flat = arrays.empty(12, 3, grad=True)
    loss = losses.loss_array()
    for _ in range(2):
        field.grad.fill(0.0)
        with ti.ad.Tape(loss=loss):
            arrays.copy_field(field, flat)
            losses.mse_loss(flat, b, loss)
        assert loss[None] == pytest.approx(((a - b) ** 2).mean(), rel=1e-12)
        np.testing.assert_allclose(field.grad.to_numpy(), 2 * (a - b) / a.size, rtol=1e-12)
    with pytest.raises(UserError, match="copy_field"):
        arrays.copy_field(field, arrays.empty(12))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda p, q, r, lf: losses.mse_loss(p, q, lf), "differ in size"),
        (lambda p, q, r, lf: losses.l1_loss(p, r, lf), "differ in size"),
        (lambda p, q, r, lf: losses.SoftIoULoss()(p, q, lf), "differ in size"),
        (lambda p, q, r, lf: losses.SoftIoULoss()(r, r, lf), "must hold scalars"),
        (lambda p, q, r, lf: losses.image_loss(p, p, lf, kind="l3"), "unknown image loss"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, lf, weight=float("nan")), "finite"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, lf, weight="heavy"), "finite"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, lf, mask=q), "mask"),
        (lambda p, q, r, lf: losses.mse_loss(r, r, lf, mask=np.ones(5)), "mask"),
        (lambda p, q, r, lf: losses.mse_loss(p, p, p), "0-d float array"),
        (lambda p, q, r, lf: losses.mse_loss(p, [[0.0] * 4] * 4, lf), "NumPy array or torch"),
        (lambda p, q, r, lf: losses.mse_loss(p, np.zeros((4, 4), int), lf), "float"),
        (
            lambda p, q, r, lf: losses.mse_loss(ti.field(ti.f64, (4, 4)), p, lf),
            "got Taichi field",
        ),
    ],
)
def test_image_loss_bad_input(call, words):
    p = ti.ndarray(ti.f64, (4, 4), needs_grad=True)
    q = ti.ndarray(ti.f64, (4, 5), needs_grad=True)
    r = ti.ndarray(ti.math.vec3, 16, needs_grad=True)
    with pytest.raises(UserError, match=words):
        call(p, q, r, losses.loss_array())


def test_image_loss_bad_tensors():
    torch = pytest.importorskip("torch")
    loss = losses.loss_array()
    strided = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)[:, ::2]
    with pytest.raises(UserError, match="not contiguous"):
        losses.mse_loss(strided, np.zeros((4, 3)), loss)
    with pytest.raises(UserError, match="float tensor|float scalars"):
        losses.mse_loss(torch.zeros(3, dtype=torch.int32), np.zeros(3), loss)


# --------------------------------------------------------------------------- mesh


@pytest.fixture(scope="module")
def sphere():
    """A perturbed icosphere (42 vertices, 80 faces)."""
    mesh = icosphere(1)
    rng = np.random.default_rng(7)
    v = mesh.vertices * rng.uniform(0.8, 1.2, (mesh.num_vertices, 1))
    return v, mesh.faces.astype(np.int64)


def mesh_arrays(v, f, spare=3):
    """Positions (V + spare,) vec3 and faces (F + spare,) ivec3 ndarrays, spare at the end."""
    pos = ti.ndarray(ti.types.vector(3, ti.f64), len(v) + spare, needs_grad=True)
    pos.from_numpy(np.vstack([v, np.full((spare, 3), 9.0)]))
    faces = ti.ndarray(ti.math.ivec3, len(f) + spare)
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
    pos, faces = mesh_arrays(v, f)
    reg = make(pos, faces, len(v), len(f))
    loss = losses.loss_array()

    def compute():
        reg(loss, weight=1.5)

    assert evaluate(loss, compute) == pytest.approx(1.5 * reference(v, f), rel=1e-10)
    assert_gradcheck(loss, compute, pos)
    assert np.all(pos.grad.to_numpy()[len(v) :] == 0)  # spare slots untouched
    # intermediate sums' gradients are cleared by the Tape's reverse pass: a second Tape agrees
    np.testing.assert_array_equal(tape_grad(loss, compute, pos), tape_grad(loss, compute, pos))


def test_normal_consistency_is_winding_independent_and_handles_nonmanifold_edges():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0.5], [0.5, 0.5, 1.0]], float)
    f = np.array([[0, 1, 2], [0, 3, 1], [1, 0, 4]])  # edge 0-1 has three faces
    flipped = f.copy()
    flipped[1] = flipped[1, ::-1]  # same surface, one face wound the other way
    pos, _ = mesh_arrays(v, f, spare=0)
    loss = losses.loss_array()
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
        (dict(positions="x"), "3-vector array"),
        (dict(positions=np.zeros((42, 2))), "3-vector array"),
        (dict(positions=lambda: ti.Vector.field(3, ti.f64, 42)), "got Taichi field"),
    ],
)
def test_mesh_regularizer_bad_input(sphere, kwargs, words):
    v, f = sphere
    pos, _ = mesh_arrays(v, f, spare=0)
    args = dict(positions=pos, faces=f)
    args.update({k: v() if callable(v) else v for k, v in kwargs.items()})
    with pytest.raises(UserError, match=words):
        losses.LaplacianLoss(**args)
