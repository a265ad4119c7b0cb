"""Soft rasterizer: forward against a brute-force float64 NumPy reference over all faces,
float64 central-difference gradchecks, K truncation, degenerate faces, bad input."""

import numpy as np
import pytest
import taichi as ti

import taichi_dr
from taichi_dr.camera import Camera
from taichi_dr.errors import UserError
from taichi_dr.render.lights import Lights
from taichi_dr.render.mesh import MeshBuffers
from taichi_dr.render.shading import Material
from taichi_dr.render.soft import SoftRasterizer, VertexShader
from taichi_dr.render.vertex import FieldVertexStage


def soft_reference(clip, faces, colors, W, H, sigma, gamma, eps, near, far, bg, K=None, r2=None):
    """Float64 brute force over every face (no binning), written from the documented
    formulas: keeps, per pixel, the K faces nearest in depth (ties: lower face id) among
    those inside or within squared distance r2. Returns (silhouette, image, count)."""
    m = min(W, H)
    sx, sy = W / m, H / m
    xs = (np.arange(W) + 0.5) / W * 2 - 1
    ys = 1 - (np.arange(H) + 0.5) / H * 2
    P = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)  # (H·W, 2) NDC, row-major
    Q = P * [sx, sy]
    per_face = []
    for f, idx in enumerate(faces):
        c = clip[idx]
        if np.any(c[:, 3] <= 0) or np.any(c[:, 2] < -c[:, 3]) or np.all(c[:, 2] > c[:, 3]):
            continue
        s = c[:, :2] / c[:, 3:] * [sx, sy]
        d2 = np.full(len(Q), np.inf)
        cross = []
        for k in range(3):
            a, e = s[k], s[(k + 1) % 3] - s[k]
            ee = e @ e
            t = np.clip((Q - a) @ e / ee, 0, 1) if ee > 0 else np.zeros(len(Q))
            r = Q - a - t[:, None] * e
            d2 = np.minimum(d2, (r**2).sum(1))
            cross.append(e[0] * (Q[:, 1] - a[1]) - e[1] * (Q[:, 0] - a[0]))
        cross = np.stack(cross, 1)
        inside = np.all(cross > 0, 1) | np.all(cross < 0, 1)
        # homogeneous barycentrics u = a × b, a_v = x_v − p_x w_v, b_v = y_v − p_y w_v,
        # expanded as u_v = A_v + B_v p_x + C_v p_y (the p_x p_y terms cancel)
        i, j = [1, 2, 0], [2, 0, 1]
        A = c[i, 0] * c[j, 1] - c[j, 0] * c[i, 1]
        B = c[j, 3] * c[i, 1] - c[i, 3] * c[j, 1]
        C = c[j, 0] * c[i, 3] - c[i, 0] * c[j, 3]
        u = A + P[:, :1] * B + P[:, 1:] * C
        u = np.where(u.sum(1, keepdims=True) < 0, -u, u).clip(0)
        tot = u.sum(1, keepdims=True)
        lam = np.where(tot > 0, u / np.where(tot > 0, tot, 1), 1 / 3)
        z = lam @ c[:, 3]
        per_face.append((f, d2, inside, lam, z))
    n = len(Q)
    log_t = np.zeros(n)
    terms = [[] for _ in range(n)]
    for f, d2, inside, lam, z in per_face:
        for i in range(n):
            if r2 is not None and not (inside[i] or d2[i] <= r2):
                continue
            terms[i].append((z[i], f, d2[i], inside[i], lam[i]))
    sil = np.zeros(n)
    img = np.zeros((n, 3))
    count = np.zeros(n, np.int32)
    for i in range(n):
        chosen = sorted(terms[i], key=lambda t: (t[0], t[1]))[:K]
        count[i] = len(chosen)
        zn = [(far - t[0]) / (far - near) for t in chosen]
        zm = max([eps] + zn)
        wsum, csum, log_t = np.exp((eps - zm) / gamma), np.exp((eps - zm) / gamma) * bg, 0.0
        for (_, f, d2, inside, lam), zni in zip(chosen, zn):
            s = (d2 if inside else -d2) / sigma
            D = 0.5 * (1 + np.tanh(s / 2))  # sigmoid without overflow
            log_t -= np.logaddexp(0, s)  # log(1 − D)
            w = D * np.exp((zni - zm) / gamma)
            wsum += w
            csum = csum + w * (lam @ colors[faces[f]])
        sil[i] = 1 - np.exp(log_t)
        img[i] = csum / wsum
    return sil.reshape(H, W), img.reshape(H, W, 3), count.reshape(H, W)


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


def extra_clip_scene(rng):
    """Clip-space faces that exercise the corner cases: ordinary, overlapping at several
    depths, zero-area (a repeated vertex, collinear), edge-on, crossing the near plane
    (not drawn), beyond the far plane (not drawn)."""

    def tri(pts):
        return [np.array([x, y, z, w]) for x, y, z, w in pts]

    verts = []
    verts += tri([(-0.6, -0.5, 0.2, 1.0), (0.5, -0.4, 0.3, 1.2), (0.0, 0.6, 0.1, 0.9)])
    verts += tri([(-0.2, -0.8, 0.5, 2.0), (0.9, 0.1, 0.6, 2.2), (-0.5, 0.7, 0.4, 1.8)])
    verts += tri([(0.1, 0.1, 0.2, 1.0), (0.1, 0.1, 0.2, 1.0), (0.4, -0.2, 0.3, 1.1)])
    verts += tri([(-0.8, -0.8, 0.2, 1.0), (-0.4, -0.4, 0.2, 1.0), (0.0, 0.0, 0.2, 1.0)])
    verts += tri([(0.3, 0.5, 0.1, 1.0), (0.6, 0.8, 0.3, 2.0), (0.3, 0.5, 0.5, 1.0)])  # edge-on
    verts += tri([(-0.3, 0.2, -2.0, 1.0), (0.3, 0.2, 0.5, 1.0), (0.0, 0.6, 0.5, 1.0)])
    verts += tri([(-0.3, -0.2, 3.0, 1.0), (0.3, -0.2, 3.0, 1.0), (0.0, 0.3, 3.0, 1.0)])
    clip = np.array(verts)
    faces = np.arange(len(clip), dtype=np.int32).reshape(-1, 3)
    return clip, faces, rng.random((len(clip), 3))


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
    clip_x, faces_x, col_x = extra_clip_scene(rng)
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
    clip, faces, colors = extra_clip_scene(rng)
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
    clip, faces, colors = extra_clip_scene(rng)
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
    clip, faces, colors = extra_clip_scene(rng)
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
