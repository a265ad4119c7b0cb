"""Soft rasterizer: forward against a brute-force float64 NumPy reference over all faces,
float64 central-difference gradchecks, K truncation, degenerate faces, bad input."""

import numpy as np
import pytest
import taichi as ti
from reference import soft_corner_cases, soft_reference
from taichi_dr.render.soft import SoftRasterizer, VertexShader

import taichi_dr
from taichi_dr.camera import Camera
from taichi_dr.errors import UserError
from taichi_dr.render.lights import Lights
from taichi_dr.render.mesh import MeshBuffers
from taichi_dr.render.shading import Material
from taichi_dr.render.vertex import FieldVertexStage

W, H = 24, 20  # non-square: distances use isotropic units
SCENE_CAMERA = dict(eye=(0.3, 0.4, 3.0), fov=45, width=W, height=H, near=0.5, far=10.0)


CAPACITY = 128  # vertices and faces of the shared buffers


@pytest.fixture(scope="module")
def shared():
    """Rasterizers (one per K) and input buffers shared by the tests: Taichi compiles a
    data-oriented kernel per instance and per field argument, so sharing keeps it fast."""
    return {
        "clip": ti.Vector.field(4, ti.f64, shape=CAPACITY, needs_grad=True),
        "faces": ti.Vector.field(3, ti.i32, shape=CAPACITY),
        "colors": ti.Vector.field(3, ti.f64, shape=CAPACITY, needs_grad=True),
    }


def make_soft(shared, K=CAPACITY, sigma=1e-3, gamma=1e-2):
    if K not in shared:
        cam = Camera.look_at(**SCENE_CAMERA)
        shared[K] = SoftRasterizer.for_camera(cam, CAPACITY, K=K, background=(0.2, 0.3, 0.4))
    shared[K].set(sigma=sigma, gamma=gamma)
    return shared[K]


def upload(shared, clip, faces, colors):
    """Copy arrays into the shared buffers (zero padded); returns the three fields."""
    for name, a in (("clip", clip), ("faces", faces), ("colors", colors)):
        pad = np.zeros((CAPACITY, a.shape[1]), a.dtype)
        pad[: len(a)] = a
        shared[name].from_numpy(pad)
    return shared["clip"], shared["faces"], shared["colors"]


def run_soft(shared, soft, clip, faces, colors):
    cf, ff, colf = upload(shared, clip, faces, colors)
    soft.select(cf, ff, len(faces))
    soft.forward(cf, ff, colf)
    return soft.silhouette.to_numpy(), soft.image.to_numpy(), soft.count.to_numpy()


def reference_for(soft, clip, faces, colors, K=None):
    bg = soft.background.to_numpy()
    return soft_reference(
        clip,
        faces,
        colors,
        W,
        H,
        soft.sigma,
        soft.gamma,
        soft.eps,
        soft.near,
        soft.far,
        bg,
        K=K,
        r2=soft.radius**2,
    )


@pytest.fixture(scope="module")
def sphere():
    mesh = taichi_dr.icosphere(1)
    mb = MeshBuffers(mesh.num_vertices, mesh.num_faces)
    mb.upload(mesh, np.random.default_rng(7).random((mesh.num_vertices, 3)))
    vs = FieldVertexStage(mb.max_vertices)
    vs.set_camera(Camera.look_at(**SCENE_CAMERA))
    vs.forward(mb)
    return mesh, mb, vs


@pytest.mark.parametrize("sigma,gamma", [(1e-3, 1e-2), (1e-4, 1e-4)])
def test_forward_matches_bruteforce_reference(shared, sphere, rng, sigma, gamma):
    mesh, mb, vs = sphere
    clip_s = vs.clip.to_numpy()[: mesh.num_vertices]
    clip_x, faces_x, col_x = soft_corner_cases(rng)
    clip = np.concatenate([clip_s, clip_x])
    faces = np.concatenate([mesh.faces, faces_x + len(clip_s)]).astype(np.int32)
    colors = np.concatenate([mb.colors.to_numpy()[: mesh.num_vertices], col_x])
    soft = make_soft(shared, sigma=sigma, gamma=gamma)
    sil, img, count = run_soft(shared, soft, clip, faces, colors)
    ref_sil, ref_img, ref_count = reference_for(soft, clip, faces, colors)
    assert soft.truncated == 0
    np.testing.assert_array_equal(count, ref_count)
    assert np.abs(sil - ref_sil).max() < 1e-10
    assert np.abs(img - ref_img).max() < 1e-9
    assert 0.99 < sil.max() <= 1.0 and sil.min() == 0.0  # covered and empty pixels exist
    cand = soft.candidates.to_numpy()
    kept = np.arange(cand.shape[-1]) < count[..., None]
    assert (cand[kept] >= 0).all() and (cand[kept] < len(faces)).all()


def test_k_truncation_keeps_nearest(shared, sphere):
    mesh, mb, vs = sphere
    clip = vs.clip.to_numpy()[: mesh.num_vertices]
    colors = mb.colors.to_numpy()[: mesh.num_vertices]
    soft = make_soft(shared, K=3)
    sil, img, count = run_soft(shared, soft, clip, mesh.faces, colors)
    ref_sil, ref_img, ref_count = reference_for(soft, clip, mesh.faces, colors, K=3)
    assert soft.truncated > 0 and count.max() == 3
    np.testing.assert_array_equal(count, ref_count)
    assert np.abs(sil - ref_sil).max() < 1e-10 and np.abs(img - ref_img).max() < 1e-9


def test_empty_and_far_away_geometry(shared, rng):
    soft = make_soft(shared)
    clip, faces, colors = soft_corner_cases(rng)
    sil, img, count = run_soft(shared, soft, clip, faces[-2:], colors)  # near-crossing + beyond far
    assert (count == 0).all() and (sil == 0).all()
    np.testing.assert_allclose(img, np.broadcast_to([0.2, 0.3, 0.4], img.shape))


def loss_and_grads(vs, mb, soft, wa, wb, loss):
    @ti.kernel
    def weighted(a: ti.types.ndarray(), b: ti.types.ndarray()):
        for y, x in soft.silhouette:
            img = soft.image[y, x]
            loss[None] += a[y, x] * soft.silhouette[y, x] + (
                b[y, x, 0] * img[0] + b[y, x, 1] * img[1] + b[y, x, 2] * img[2]
            )

    def evaluate():
        loss[None] = 0.0
        vs.forward(mb)
        soft.forward(vs.clip, mb.faces, mb.colors)
        weighted(wa, wb)
        return loss[None]

    return weighted, evaluate


@pytest.mark.parametrize(
    "sigma,gamma,silhouette", [(1e-3, 1e-2, 1.0), (1e-2, 1e-3, 1.0), (1e-3, 2e-4, 0.0)]
)
def test_gradcheck_positions_and_colors(shared, sphere, rng, sigma, gamma, silhouette):
    """Tape gradients of Σ a·silhouette + Σ b·image w.r.t. vertex positions (through the
    vertex stage) and vertex colours against float64 central differences, candidates fixed.
    The last case (image loss only, γ small) has pairs whose softmax weight is exactly 0,
    which the backward pass skips."""
    mesh, mb, vs = sphere
    soft = make_soft(shared, sigma=sigma, gamma=gamma)
    vs.forward(mb)
    soft.select(vs.clip, mb.faces, mb.num_faces)
    assert soft.truncated == 0
    wa, wb = silhouette * rng.standard_normal((H, W)), rng.standard_normal((H, W, 3))
    loss = ti.field(ti.f64, shape=(), needs_grad=True)
    weighted, evaluate = loss_and_grads(vs, mb, soft, wa, wb, loss)
    mb.zero_grad()
    with ti.ad.Tape(loss):
        vs.forward(mb)
        soft.forward(vs.clip, mb.faces, mb.colors)
        weighted(wa, wb)
    grads = {"positions": mb.positions.grad.to_numpy(), "colors": mb.colors.grad.to_numpy()}
    h = 1e-6
    for name, g in grads.items():
        field = getattr(mb, name)
        x0 = field.to_numpy()
        fd = np.zeros_like(x0)
        rows = slice(0, None, 3 if name == "positions" else 5)  # a subset keeps it fast
        for i in range(mesh.num_vertices)[rows]:
            for k in range(3):
                x = x0.copy()
                x[i, k] += h
                field.from_numpy(x)
                up = evaluate()
                x[i, k] -= 2 * h
                field.from_numpy(x)
                fd[i, k] = (up - evaluate()) / (2 * h)
        field.from_numpy(x0)
        err = np.abs(g[rows] - fd[rows]).max() / np.abs(fd[rows]).max()
        assert err < 1e-4, (name, err)
        assert np.abs(fd).max() > 1e-3  # the check is not vacuous


def test_degenerate_faces_give_finite_gradients(shared, rng):
    clip, faces, colors = soft_corner_cases(rng)
    faces = faces[2:5]  # zero-area (repeated vertex), collinear, edge-on
    soft = make_soft(shared, sigma=1e-3, gamma=1e-4)
    cf, ff, colf = upload(shared, clip, faces, colors)
    soft.select(cf, ff, len(faces))
    assert soft.num_pairs > 0
    loss = ti.field(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def total():
        for y, x in soft.silhouette:
            loss[None] += soft.silhouette[y, x] + soft.image[y, x].sum()

    with ti.ad.Tape(loss):
        soft.forward(cf, ff, colf)
        total()
    for a in (soft.silhouette, soft.image, cf.grad, colf.grad):
        assert np.isfinite(a.to_numpy()).all()
    assert soft.silhouette.to_numpy().max() <= 0.5 + 1e-12  # outside everywhere
    ref_sil, ref_img, _ = reference_for(soft, clip, faces, colors)
    assert np.abs(soft.silhouette.to_numpy() - ref_sil).max() < 1e-10
    assert np.abs(soft.image.to_numpy() - ref_img).max() < 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": 0.0},
        {"sigma": -1e-4},
        {"sigma": float("nan")},
        {"gamma": 0.0},
        {"gamma": -1.0},
        {"K": 0},
        {"K": -5},
        {"K": 2.5},
        {"cutoff": 0.7},
        {"eps": float("inf")},
        {"background": (1.0, 2.0)},
        {"near": 0.0},
    ],
)
def test_bad_parameters_raise_user_error(kwargs):
    with pytest.raises(UserError):
        SoftRasterizer(8, 8, 4, **kwargs)


def test_bad_calls_raise_user_error(shared, rng):
    soft = SoftRasterizer(8, 8, 2)
    clip, faces, colors = soft_corner_cases(rng)
    cf, ff, colf = upload(shared, clip, faces, colors)
    with pytest.raises(UserError, match="select"):
        soft.forward(cf, ff, colf)
    with pytest.raises(UserError, match="max_faces"):
        soft.select(cf, ff, len(faces))
    with pytest.raises(UserError, match="sigma"):
        soft.set(sigma=0.0)


def test_vertex_shader_lambert(sphere):
    """Per-vertex Lambert (two-sided, ambient + one directional light) against NumPy."""
    mesh, mb, vs = sphere
    lights, material = Lights(), Material()
    shader = VertexShader(mb.max_vertices)
    shader.forward("lambert", vs, mb, lights, material)
    p = vs.world.to_numpy()
    n = vs.normal.to_numpy()
    v = vs.eye.to_numpy() - p
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    n = np.where((n * v).sum(1, keepdims=True) < 0, -n, n)
    l_dir = np.array([0.3, 0.6, 1.0]) / np.linalg.norm([0.3, 0.6, 1.0])
    albedo = 0.8 * mb.colors.to_numpy()
    expected = albedo * (0.1 + 0.9 * np.maximum(n @ l_dir, 0))[:, None]
    np.testing.assert_allclose(shader.colors.to_numpy(), expected, rtol=1e-10, atol=1e-12)
