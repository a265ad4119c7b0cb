"""The soft rasterizer's array operations: selection and blend against the float64
brute-force reference (images, silhouettes, candidate sets, K truncation), batches of two
different views each equal to a single-view call (outputs and gradients), float64
central-difference gradchecks, per-vertex shading."""

import numpy as np
import pytest
import taichi as ti
from reference import soft_corner_cases, soft_reference

import taichi_dr
from taichi_dr.ad.gradcheck import gradcheck
from taichi_dr.camera import Camera
from taichi_dr.errors import UserError
from taichi_dr.render import arrays, soft_faces
from taichi_dr.render.lights import Lights
from taichi_dr.render.shading import Material
from taichi_dr.render.soft_blend import blend, blend_backward
from taichi_dr.render.soft_faces import radius, soft_params
from taichi_dr.render.soft_select import (
    RECORDS,
    SoftCandidates,
    _row_out_of_reach,
    write_face_records,
)
from taichi_dr.render.vertex_shading import shade_vertices

W, H = 24, 20  # non-square: distances use isotropic units
NEAR, FAR, BG = 0.5, 10.0, (0.2, 0.3, 0.4)
CAMERAS = [
    Camera.look_at(eye=(0.3, 0.4, 3.0), fov=45, width=W, height=H, near=NEAR, far=FAR),
    Camera.look_at(eye=(-1.4, 0.9, 2.2), fov=55, width=W, height=H, near=NEAR, far=FAR),
]
CAPACITY = 128  # K large enough to keep every candidate of the test scenes


@pytest.fixture(scope="module")
def scene():
    """A sphere seen by both cameras (clip, world, normal, eye per camera, computed in
    NumPy), its faces and vertex colours, and the faces of ``soft_corner_cases``."""
    mesh = taichi_dr.icosphere(1)
    p = np.concatenate([mesh.vertices, np.ones((mesh.num_vertices, 1))], 1)
    views = [
        {"clip": p @ cam.mvp.T, "world": mesh.vertices, "normal": mesh.normals, "eye": cam.eye}
        for cam in CAMERAS
    ]
    return {
        "faces": mesh.faces.astype(np.int32),
        "colors": np.random.default_rng(7).random((mesh.num_vertices, 3)),
        "views": views,
        "corner": soft_corner_cases(np.random.default_rng(3)),
    }


def new_render(clip, faces, ranges, colors, sigma, gamma, wa, wb, K=CAPACITY, cand=None):
    """The new ops' outputs (shaped per view) and the explicit backward's gradients of
    Σ wa·silhouette + Σ wb·image."""
    B = len(ranges)
    frame = arrays.Frame(B, H, W)
    params = soft_params(sigma=sigma, gamma=gamma, near=NEAR, far=FAR, background=BG)
    clip_a, colors_a = arrays.from_numpy(clip), arrays.from_numpy(colors)
    faces_a = arrays.from_numpy(faces, dtype=ti.i32)
    cand = cand or SoftCandidates()
    cand.select(clip_a, faces_a, arrays.from_numpy(ranges, dtype=ti.i32), frame, params, K=K)
    sil, img = arrays.empty(frame.pixels), arrays.empty(frame.pixels, 3)
    blend(cand, clip_a, colors_a, params, sil, img)
    g_clip, g_colors = arrays.from_numpy(0 * clip), arrays.from_numpy(0 * colors)
    g_sil, g_img = arrays.from_numpy(wa.reshape(-1)), arrays.from_numpy(wb.reshape(-1, 3))
    blend_backward(cand, clip_a, colors_a, params, sil, img, g_sil, g_img, g_clip, g_colors)
    n = frame.pixels
    return {
        "silhouette": sil.to_numpy().reshape(B, H, W),
        "image": img.to_numpy().reshape(B, H, W, 3),
        "count": cand.count.to_numpy()[:n].reshape(B, H, W),
        "candidates": cand.candidates.to_numpy()[: n * K].reshape(B, H, W, K),
        "truncated": cand.truncated,
        "clip_grad": g_clip.to_numpy(),
        "colors_grad": g_colors.to_numpy(),
    }


def sphere_and_corners(scene, view=0):
    """One clip array with the sphere (as seen by camera ``view``) and the corner cases."""
    clip_x, faces_x, colors_x = scene["corner"]
    n = len(scene["colors"])
    clip = np.concatenate([scene["views"][view]["clip"], clip_x])
    faces = np.concatenate([scene["faces"], faces_x + n]).astype(np.int32)
    return clip, faces, np.concatenate([scene["colors"], colors_x])


def weights(rng, B=1, silhouette=1.0):
    return silhouette * rng.standard_normal((B, H, W)), rng.standard_normal((B, H, W, 3))


def single(clip, faces, colors, sigma, gamma, wa, wb):
    """A single-view call (view 0 of ``new_render``)."""
    out = new_render(clip, faces, np.array([[0, len(faces)]]), colors, sigma, gamma, wa, wb)
    for name in ("silhouette", "image", "count", "candidates"):
        out[name] = out[name][0]
    return out


def assert_same(new, ref, b=0, first=0):
    """View b of a batched render equals the single-view render ``ref`` (of the faces
    from ``first`` on)."""
    assert np.abs(new["silhouette"][b] - ref["silhouette"]).max() < 1e-12
    assert np.abs(new["image"][b] - ref["image"]).max() < 1e-12
    np.testing.assert_array_equal(new["count"][b], ref["count"])
    kept = np.arange(CAPACITY) < ref["count"][..., None]
    np.testing.assert_array_equal(new["candidates"][b][kept], ref["candidates"][kept] + first)


def assert_close(g, g_ref):
    assert np.abs(g_ref).max() > 1e-3  # not vacuous
    assert np.abs(g - g_ref).max() <= 1e-10 * np.abs(g_ref).max()


@pytest.mark.parametrize("sigma,gamma", [(1e-3, 1e-2), (1e-4, 1e-4)])
def test_matches_reference(scene, rng, sigma, gamma):
    clip, faces, colors = sphere_and_corners(scene)
    wa, wb = weights(rng)
    ranges = np.array([[0, len(faces)]])
    new = new_render(clip, faces, ranges, colors, sigma, gamma, wa, wb)
    assert new["truncated"] == 0
    sil, img, count = soft_reference(
        clip, faces, colors, W, H, sigma, gamma, 1e-3, NEAR, FAR, np.array(BG),
        r2=radius(sigma, 1e-4) ** 2,
    )  # fmt: skip
    np.testing.assert_array_equal(new["count"][0], count)
    assert np.abs(new["silhouette"][0] - sil).max() < 1e-10
    assert np.abs(new["image"][0] - img).max() < 1e-9
    assert 0.99 < sil.max() <= 1.0 and sil.min() == 0.0  # covered and empty pixels exist


def test_k_truncation_keeps_the_nearest(scene, rng):
    clip, faces, colors = scene["views"][0]["clip"], scene["faces"], scene["colors"]
    wa, wb = weights(rng)
    new = new_render(clip, faces, np.array([[0, len(faces)]]), colors, 1e-3, 1e-2, wa, wb, K=3)
    sil, img, count, kept = soft_reference(
        clip, faces, colors, W, H, 1e-3, 1e-2, 1e-3, NEAR, FAR, np.array(BG), K=3,
        r2=radius(1e-3, 1e-4) ** 2, candidates=True,
    )  # fmt: skip
    assert new["truncated"] > 0 and count.max() == 3
    np.testing.assert_array_equal(new["count"][0], count)
    cand = new["candidates"][0].reshape(H * W, 3)
    assert [set(c[:n]) for c, n in zip(cand, count.ravel())] == kept
    assert np.abs(new["silhouette"][0] - sil).max() < 1e-10
    assert np.abs(new["image"][0] - img).max() < 1e-9


def test_depth_bounded_rejection_keeps_the_nearest_on_a_dense_mesh(rng):
    """A denser sphere filling the view, K = 4: every pixel of a tile overflows, so
    selection skips faces by depth per pixel, per face and per tile; the candidate sets
    and the number of truncated pixels still equal brute force's."""
    mesh = taichi_dr.icosphere(3)
    cam = Camera.look_at(eye=(0.2, 0.3, 1.6), fov=60, width=W, height=H, near=NEAR, far=FAR)
    p = np.concatenate([mesh.vertices, np.ones((mesh.num_vertices, 1))], 1)
    clip, faces = p @ cam.mvp.T, mesh.faces.astype(np.int32)
    colors = rng.random((mesh.num_vertices, 3))
    wa, wb = weights(rng)
    new = new_render(clip, faces, np.array([[0, len(faces)]]), colors, 1e-3, 1e-2, wa, wb, K=4)
    args = (clip, faces, colors, W, H, 1e-3, 1e-2, 1e-3, NEAR, FAR, np.array(BG))
    r2 = radius(1e-3, 1e-4) ** 2
    sil, img, count, kept, ranked = soft_reference(*args, K=4, r2=r2, candidates=True, depths=True)
    reach = np.array([len(r) for r in ranked]).reshape(H, W)  # faces within reach
    assert (reach[:8, 8:16] > 4).all()  # a whole tile overflows
    assert new["truncated"] == (reach > 4).sum()
    np.testing.assert_array_equal(new["count"][0], count)
    cand = new["candidates"][0].reshape(H * W, 4)
    same = np.array([set(c[:n]) == k for c, n, k in zip(cand, count.ravel(), kept)])
    for c, r in (cr for cr, ok in zip(zip(cand, ranked), same) if not ok):
        # only a tie at the 4th depth (to rounding: clamped barycentrics) may differ
        z4 = r[3][0]
        assert r[4][0] - z4 <= 1e-12 * z4 and set(c) <= {f for z, f in r if z <= z4 * (1 + 1e-12)}
    assert same.mean() > 0.95
    same = same.reshape(H, W)
    assert np.abs(new["silhouette"][0] - sil)[same].max() < 1e-10
    assert np.abs(new["image"][0] - img)[same].max() < 1e-9


@ti.kernel
def _exp_nonpositive(x: soft_faces.Real, out: soft_faces.Real):
    for i in range(x.shape[0]):
        out[i] = soft_faces.exp_nonpositive(x[i])


def test_exp_nonpositive_matches_numpy(rng):
    """The blend's inline e^x (x ≤ 0): within a few ulps of NumPy's, exactly 1 at 0 (and
    above), exactly 0 below the underflow limit."""
    low = soft_faces.EXP_POLY[taichi_dr.backend.precision()]["UNDERFLOW"]
    x = np.concatenate([-rng.exponential(3.0, 2000), rng.uniform(low, 0, 2000), [0.0, 1.0]])
    out = arrays.empty(len(x))
    _exp_nonpositive(arrays.from_numpy(x), out)
    y, ref = out.to_numpy(), np.exp(np.minimum(x, 0.0))
    assert np.abs(y - ref).max() <= 4 * np.finfo(y.dtype).eps * ref.max()
    assert (np.abs(y - ref) <= 4 * np.finfo(y.dtype).eps * ref)[x > low + 1].all()
    assert y[-2] == 1.0 and y[-1] == 1.0
    below = arrays.empty(2)
    _exp_nonpositive(arrays.from_numpy(np.array([low - 1.0, -1e6])), below)
    assert (below.to_numpy() == 0.0).all()


@ti.kernel
def _rows_out_of_reach(
    screen: soft_faces.Mat32, line: soft_faces.Mat3, rows: soft_faces.Vec3, r: float,
    out: soft_faces.Int,
):  # fmt: skip
    for n in range(out.shape[0]):
        j = n // rows.shape[0]
        q = rows[n % rows.shape[0]]
        out[n] = ti.cast(_row_out_of_reach(screen[j], line[j], q[0], q[1], q[2], r), ti.i32)


def _distance_to_triangle(q, s):
    """Euclidean distance from points q (N, 2) to the filled triangle s (3, 2)."""
    d = np.full(len(q), np.inf)
    signs = []
    for k in range(3):
        a, b = s[k], s[(k + 1) % 3]
        e = b - a
        t = np.clip(((q - a) @ e) / max(e @ e, 1e-300), 0.0, 1.0)
        d = np.minimum(d, np.linalg.norm(q - (a + t[:, None] * e), axis=1))
        signs.append(e[0] * (q[:, 1] - a[1]) - e[1] * (q[:, 0] - a[0]))
    signs = np.array(signs)
    inside = (signs >= 0).all(0) | (signs <= 0).all(0)
    return np.where(inside, 0.0, d)


def test_row_pre_test_skips_only_rows_out_of_reach(rng):
    """Selection's cheap per-row test (``_row_out_of_reach``) against float64 distances:
    a row segment it skips is farther than the reach r from the face all along (so the
    exact test would have kept no pixel of it), and it skips most rows that are."""
    F, r = 40, 0.3
    clip = np.concatenate([rng.uniform(-1, 1, (3 * F, 2)), np.zeros((3 * F, 1)),
                           rng.uniform(0.5, 2.0, (3 * F, 1))], 1)  # fmt: skip
    clip[:, :2] *= clip[:, 3:]  # screen points uniform in [-1, 1]²
    clip[-3:, :2] = clip[-3, :2] * clip[-3:, 3:] / clip[-3, 3]  # a zero-area face
    faces = np.arange(3 * F, dtype=np.int32).reshape(F, 3)
    records = [
        ti.ndarray(
            ti.types.matrix(*shape, ti.f64) if len(shape) == 2 else ti.types.vector(3, ti.f64), F
        )
        for shape in RECORDS.values()
    ]
    write_face_records(
        arrays.from_numpy(clip), arrays.from_numpy(faces, dtype=ti.i32),
        arrays.from_numpy(np.array([[0, F]]), dtype=ti.i32), 3 * F, F, 64, 64,
        soft_params(), *records, arrays.from_numpy(np.zeros((F, 4)), dtype=ti.i32), False,
    )  # fmt: skip
    qx = np.sort(rng.uniform(-1.5, 1.5, (60, 2)), 1)
    rows = np.concatenate([rng.uniform(-1.5, 1.5, (60, 1)), qx], 1)  # (qy, qxa, qxb)
    out = arrays.from_numpy(np.zeros(F * len(rows), dtype=np.int32), dtype=ti.i32)
    _rows_out_of_reach(records[0], records[1], arrays.from_numpy(rows), r, out)
    skipped = out.to_numpy().reshape(F, len(rows)).astype(bool)
    screen = records[0].to_numpy()
    nearest = np.zeros((F, len(rows)))
    for j in range(F):
        for n, (qy, xa, xb) in enumerate(rows):
            x = np.concatenate([np.linspace(xa, xb, 400), [xa, xb]])
            q = np.stack([x, np.full_like(x, qy)], 1)
            nearest[j, n] = _distance_to_triangle(q, screen[j]).min()
    assert (nearest[skipped] > r).all()
    far = nearest > 1.1 * r
    assert skipped[far].mean() > 0.5 and skipped.sum() > 100  # not vacuous


def test_blend_after_the_clip_coordinates_moved(scene, rng):
    """The blend takes its softmax shift from selection's depths; when the clip
    coordinates moved nearer since (scaled: same picture, same candidates, other depths),
    it finds pairs above that shift and blends again with the pairs' own: the same
    outputs and gradients as after a fresh selection."""
    clip, faces, colors = scene["views"][0]["clip"], scene["faces"], scene["colors"]
    wa, wb = weights(rng)
    ranges = np.array([[0, len(faces)]])
    moved = 0.8 * clip
    fresh = new_render(moved, faces, ranges, colors, 1e-3, 1e-4, wa, wb)
    cand = SoftCandidates()
    new_render(clip, faces, ranges, colors, 1e-3, 1e-4, wa, wb, cand=cand)
    f = SoftLoss(clip, faces, ranges, colors, 1e-3, 1e-4, CAPACITY, rng)
    f.cand, f.wa, f.wb = cand, wa, wb
    g_clip, g_colors = f.gradient(moved, colors)  # blends at the moved coordinates
    B = (1, H, W)
    assert np.abs(f.sil.to_numpy().reshape(B) - fresh["silhouette"]).max() < 1e-12
    assert np.abs(f.img.to_numpy().reshape(*B, 3) - fresh["image"]).max() < 1e-12
    assert_close(g_clip, fresh["clip_grad"])
    assert_close(g_colors, fresh["colors_grad"])


def test_two_instanced_views_each_equal_a_single_view(scene, rng):
    """Instanced mode: both views draw all faces of their own clip coordinates; shared
    colours get the sum of both views' gradients."""
    faces, colors = scene["faces"], scene["colors"]
    clips = [v["clip"] for v in scene["views"]]
    wa, wb = weights(rng, B=2)
    ranges = np.array([[0, len(faces)]] * 2)
    new = new_render(np.concatenate(clips), faces, ranges, colors, 1e-3, 1e-2, wa, wb)
    refs = [single(clips[b], faces, colors, 1e-3, 1e-2, wa[b], wb[b]) for b in range(2)]
    assert np.abs(new["silhouette"][0] - new["silhouette"][1]).max() > 0.5  # views differ
    V = len(colors)
    for b, ref in enumerate(refs):
        assert_same(new, ref, b)
        assert_close(new["clip_grad"][b * V : (b + 1) * V], ref["clip_grad"])
    assert_close(new["colors_grad"], refs[0]["colors_grad"] + refs[1]["colors_grad"])


def test_two_views_of_different_meshes_with_their_own_colours(scene, rng):
    """Concatenated mode: view 0 draws the sphere, view 1 the corner-case faces (face
    ranges), each with its own clip coordinates and vertex colours."""
    clip0, faces, colors = sphere_and_corners(scene, view=0)
    clip1 = sphere_and_corners(scene, view=1)[0]
    colors1 = rng.random(colors.shape)
    nf = len(scene["faces"])
    ranges = np.array([[0, nf], [nf, len(faces) - nf]])
    wa, wb = weights(rng, B=2)
    new = new_render(
        np.concatenate([clip0, clip1]), faces, ranges, np.concatenate([colors, colors1]),
        1e-3, 1e-2, wa, wb,
    )  # fmt: skip
    refs = [
        single(clip0, faces[:nf], colors, 1e-3, 1e-2, wa[0], wb[0]),
        single(clip1, faces[nf:], colors1, 1e-3, 1e-2, wa[1], wb[1]),
    ]
    V = len(colors)
    for b, ref in enumerate(refs):
        assert_same(new, ref, b, first=ranges[b][0])
        assert_close(new["clip_grad"][b * V : (b + 1) * V], ref["clip_grad"])
        assert_close(new["colors_grad"][b * V : (b + 1) * V], ref["colors_grad"])


class SoftLoss:
    """L = Σ wa·silhouette + Σ wb·image of the new ops for a batch, candidates fixed at
    the start point; evaluates L and its gradient (explicit backward) at a point."""

    def __init__(self, clip, faces, ranges, colors, sigma, gamma, K, rng, silhouette=1.0):
        B = len(ranges)
        self.frame = arrays.Frame(B, H, W)
        self.params = soft_params(sigma=sigma, gamma=gamma, near=NEAR, far=FAR, background=BG)
        self.clip, self.colors = arrays.from_numpy(clip), arrays.from_numpy(colors)
        self.cand = SoftCandidates()
        faces_a, ranges_a = (arrays.from_numpy(a, dtype=ti.i32) for a in (faces, ranges))
        self.cand.select(self.clip, faces_a, ranges_a, self.frame, self.params, K=K)
        self.sil = arrays.empty(self.frame.pixels)
        self.img = arrays.empty(self.frame.pixels, 3)
        self.wa, self.wb = weights(rng, B, silhouette)

    def __call__(self, clip, colors):
        self.clip.from_numpy(clip)
        self.colors.from_numpy(colors)
        blend(self.cand, self.clip, self.colors, self.params, self.sil, self.img)
        sil, img = self.sil.to_numpy(), self.img.to_numpy()
        return float((self.wa.ravel() * sil).sum() + (self.wb.reshape(-1, 3) * img).sum())

    def gradient(self, clip, colors):
        self(clip, colors)
        g_clip, g_colors = arrays.from_numpy(0 * clip), arrays.from_numpy(0 * colors)
        g_sil = arrays.from_numpy(self.wa.ravel())
        g_img = arrays.from_numpy(self.wb.reshape(-1, 3))
        args = (self.cand, self.clip, self.colors, self.params, self.sil, self.img)
        blend_backward(*args, g_sil, g_img, g_clip, g_colors)
        return g_clip.to_numpy(), g_colors.to_numpy()


@pytest.mark.parametrize(
    "sigma,gamma,K,silhouette,batched",
    [
        (1e-3, 1e-2, 50, 1.0, False),
        (1e-2, 1e-3, 50, 1.0, True),
        (1e-3, 2e-4, 50, 0.0, False),  # image loss only: pairs with weight exactly 0 skipped
        (1e-3, 1e-2, 3, 1.0, True),  # K truncation
    ],
)
def test_gradcheck_clip_and_colors(scene, rng, sigma, gamma, K, silhouette, batched):
    """The explicit backward pass against float64 central differences of the forward
    (two views, a subset of the clip and colour coordinates)."""
    faces, colors = scene["faces"], scene["colors"]
    clip = np.concatenate([v["clip"] for v in scene["views"]])
    if batched:
        colors = np.concatenate([colors, rng.random(colors.shape)])
    ranges = np.array([[0, len(faces)]] * 2)
    f = SoftLoss(clip, faces, ranges, colors, sigma, gamma, K, rng, silhouette)
    assert (f.cand.truncated > 0) == (K == 3)
    g_clip, g_colors = f.gradient(clip, colors)
    for name, x0, g in (("clip", clip, g_clip), ("colors", colors, g_colors)):
        rows = np.arange(0, len(x0), 5 if name == "clip" else 9)

        def f_rows(x, name=name, rows=rows):
            clip_x, colors_x = clip.copy(), colors.copy()
            (clip_x if name == "clip" else colors_x)[rows] = x
            return f(clip_x, colors_x)

        result = gradcheck(f_rows, lambda _, g=g, rows=rows: g[rows], x0[rows])
        assert result.ok, (name, result)
        assert np.abs(g[rows]).max() > 1e-3  # the check is not vacuous


def test_tape_calls_the_backward(scene, rng):
    """Under ti.ad.Tape the blend's gradients equal the explicit backward's."""
    faces, colors = scene["faces"], scene["colors"]
    clip = np.concatenate([v["clip"] for v in scene["views"]])
    ranges = np.array([[0, len(faces)]] * 2)
    f = SoftLoss(clip, faces, ranges, colors, 1e-3, 1e-2, 50, rng)
    g_clip, g_colors = f.gradient(clip, colors)
    clip_a = arrays.from_numpy(clip, grad=True)
    colors_a = arrays.from_numpy(colors, grad=True)
    sil, img = arrays.empty(f.frame.pixels, grad=True), arrays.empty(f.frame.pixels, 3, grad=True)
    wa, wb = arrays.from_numpy(f.wa.ravel()), arrays.from_numpy(f.wb.reshape(-1, 3))
    loss = ti.ndarray(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def total(
        sil: arrays.Real,
        img: arrays.Vec3,
        wa: arrays.Real,
        wb: arrays.Vec3,
        loss: ti.types.ndarray(),
    ):
        for i in range(sil.shape[0]):
            loss[None] += wa[i] * sil[i] + wb[i].dot(img[i])

    with ti.ad.Tape(loss):
        blend(f.cand, clip_a, colors_a, f.params, sil, img)
        total(sil, img, wa, wb, loss)
    assert abs(loss.to_numpy() - f(clip, colors)) < 1e-12
    assert_close(clip_a.grad.to_numpy(), g_clip)
    assert_close(colors_a.grad.to_numpy(), g_colors)


def test_only_the_gradients_asked_for(scene, rng):
    """A gradient passed as None is not computed; the others are unchanged."""
    faces, colors = scene["faces"], scene["colors"]
    clip = scene["views"][0]["clip"]
    f = SoftLoss(clip, faces, np.array([[0, len(faces)]]), colors, 1e-3, 1e-2, 50, rng)
    g_clip = f.gradient(clip, colors)[0]
    only = arrays.from_numpy(0 * clip)
    g_sil = arrays.from_numpy(f.wa.ravel())
    g_img = arrays.from_numpy(f.wb.reshape(-1, 3))
    blend_backward(f.cand, f.clip, f.colors, f.params, f.sil, f.img, g_sil, g_img, only)
    assert_close(only.to_numpy(), g_clip)


def test_empty_views_far_geometry_and_degenerate_faces(scene, rng):
    """A view with no faces, one with only faces that are not drawn (crossing the near
    plane, beyond the far plane) and one with degenerate faces (outside everywhere)."""
    clip, faces, colors = scene["corner"]
    ranges = np.array([[0, 0], [5, 2], [2, 3]])
    B = len(ranges)
    f = SoftLoss(np.tile(clip, (B, 1)), faces, ranges, colors, 1e-3, 1e-4, 50, rng)
    g_clip, g_colors = f.gradient(np.tile(clip, (B, 1)), colors)
    sil, img = f.sil.to_numpy().reshape(B, H, W), f.img.to_numpy().reshape(B, H, W, 3)
    count = f.cand.count.to_numpy()[: B * H * W].reshape(B, H, W)
    assert (count[:2] == 0).all() and (sil[:2] == 0).all() and count[2].max() > 0
    np.testing.assert_allclose(img[:2], np.broadcast_to(BG, (2, H, W, 3)))
    assert np.isfinite(g_clip).all() and np.isfinite(g_colors).all()
    assert sil[2].max() <= 0.5 + 1e-12  # outside everywhere
    ref_sil, ref_img, _ = soft_reference(
        clip, faces[2:5], colors, W, H, 1e-3, 1e-4, 1e-3, NEAR, FAR, np.array(BG),
        r2=radius(1e-3, 1e-4) ** 2,
    )  # fmt: skip
    assert np.abs(sil[2] - ref_sil).max() < 1e-10 and np.abs(img[2] - ref_img).max() < 1e-9


def test_bad_input_raises_user_error(scene):
    clip = arrays.from_numpy(scene["views"][0]["clip"])
    faces = arrays.from_numpy(scene["faces"], dtype=ti.i32)
    colors = arrays.from_numpy(scene["colors"])
    F = len(scene["faces"])
    frame, params = arrays.Frame(1, H, W), soft_params()
    for kwargs in ({"sigma": 0.0}, {"gamma": -1.0}, {"cutoff": 0.7}, {"eps": float("inf")},
                   {"background": (1.0, 2.0)}, {"near": 0.0}):  # fmt: skip
        with pytest.raises(UserError):
            soft_params(**kwargs)
    cand = SoftCandidates()
    sil, img = arrays.empty(frame.pixels), arrays.empty(frame.pixels, 3)
    with pytest.raises(UserError, match="select"):
        blend(cand, clip, colors, params, sil, img)

    def ranges(r):
        return arrays.from_numpy(np.array(r).reshape(-1, 2), dtype=ti.i32)

    for r, match in (([0, F + 1], "within"), ([-1, 2], "within"), ([[0, F], [0, F]], "views")):
        with pytest.raises(UserError, match=match):
            cand.select(clip, faces, ranges(r), frame, params)
    with pytest.raises(UserError, match="K"):
        cand.select(clip, faces, ranges([0, F]), frame, params, K=0)
    cand.select(clip, faces, ranges([0, F]), frame, params)
    with pytest.raises(UserError, match="colours"):
        blend(cand, clip, arrays.empty(5, 3), params, sil, img)
    with pytest.raises(UserError, match="pixels"):
        blend(cand, clip, colors, params, sil, arrays.empty(7, 3))


def test_torch_tensors_in_and_out(scene, rng):
    """Torch tensors go straight to the ops (no copies); the explicit backward writes into
    the tensors the caller passes, e.g. a torch bridge's gradient buffers."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    faces, colors = scene["faces"], scene["colors"]
    clip = np.concatenate([v["clip"] for v in scene["views"]])
    ranges = np.array([[0, len(faces)]] * 2)
    f = SoftLoss(clip, faces, ranges, colors, 1e-3, 1e-2, 50, rng)
    g_clip, g_colors = f.gradient(clip, colors)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
         {"clip": clip, "colors": colors, "faces": faces, "ranges": ranges.astype(np.int32),
          "wa": f.wa.reshape(-1), "wb": f.wb.reshape(-1, 3)}.items()}  # fmt: skip
    sil, img = torch.zeros(f.frame.pixels), torch.zeros(f.frame.pixels, 3, dtype=torch.float64)
    sil = sil.double()
    cand = SoftCandidates()
    cand.select(t["clip"], t["faces"], t["ranges"], f.frame, f.params, K=50)
    blend(cand, t["clip"], t["colors"], f.params, sil, img)
    assert np.abs(sil.numpy() - f.sil.to_numpy()).max() == 0
    assert np.abs(img.numpy() - f.img.to_numpy()).max() == 0
    tc, tcol = torch.zeros_like(t["clip"]), torch.zeros_like(t["colors"])
    blend_backward(cand, t["clip"], t["colors"], f.params, sil, img, t["wa"], t["wb"], tc, tcol)
    assert_close(tc.numpy(), g_clip)
    assert_close(tcol.numpy(), g_colors)


@pytest.fixture(scope="module")
def lighting():
    """Packed lights (a directional and a point light) and material shared by the vertex
    shading tests."""
    lights = Lights(
        directional=(((0.3, 0.6, 1.0), (0.9, 0.8, 0.7)),), point=(((1, 2, 2), (3, 3, 3)),)
    )
    return lights, Material()


def test_vertex_shading_gradcheck(scene, lighting, rng):
    """Tape gradients of Σ w·colour w.r.t. world positions, normals and per-view albedo
    against float64 central differences (Lambert, two views)."""
    views, n = scene["views"], len(scene["colors"])
    lights, material = lighting
    x0 = {
        "world": np.concatenate([v["world"] for v in views]),
        "normal": np.concatenate([v["normal"] for v in views]),
        "albedo": rng.random((2 * n, 3)),
    }
    inputs = {k: arrays.from_numpy(v, grad=True) for k, v in x0.items()}
    eye = arrays.from_numpy(np.stack([v["eye"] for v in views]))
    out = arrays.empty(2 * n, 3, grad=True)
    w = arrays.from_numpy(rng.standard_normal((2 * n, 3)))
    loss = ti.ndarray(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def total(out: arrays.Vec3, w: arrays.Vec3, loss: ti.types.ndarray()):
        for i in range(out.shape[0]):
            loss[None] += w[i].dot(out[i])

    def run():
        args = (inputs["world"], inputs["normal"], inputs["albedo"], eye)
        shade_vertices(
            "lambert", *args, material.array(False), lights.array(False), lights.counts, out
        )
        total(out, w, loss)

    with ti.ad.Tape(loss):
        run()
    for name, x in x0.items():
        g = inputs[name].grad.to_numpy()
        rows = np.arange(0, 2 * n, 7)

        def f(v, name=name, x=x, rows=rows):
            y = x.copy()
            y[rows] = v
            inputs[name].from_numpy(y)
            loss.fill(0)
            run()
            inputs[name].from_numpy(x)
            return float(loss.to_numpy())

        result = gradcheck(f, lambda _, g=g, rows=rows: g[rows], x[rows])
        assert result.ok, (name, result)
        assert np.abs(g[rows]).max() > 1e-2


def test_arrays_zero_sets_scalar_and_vector_arrays_to_zero():
    arrs = [arrays.from_numpy(np.ones(shape)) for shape in ((5,), (5, 3), (5, 4))]
    grad = arrays.empty(5, 3, grad=True)
    grad.grad.from_numpy(np.ones((5, 3)))
    arrays.zero(*arrs, grad.grad)
    assert all((a.to_numpy() == 0).all() for a in (*arrs, grad.grad))


def test_vertex_shading_lambert_closed_form(scene):
    """Per-vertex Lambert (two-sided, ambient + one directional light, the defaults) of
    two views against NumPy."""
    views, n = scene["views"], len(scene["colors"])
    world = np.concatenate([v["world"] for v in views])
    normal = np.concatenate([v["normal"] for v in views])
    eye = np.stack([v["eye"] for v in views])
    lights, material = Lights(), Material()
    out = arrays.empty(2 * n, 3)
    a = arrays.from_numpy
    shade_vertices(
        "lambert", a(world), a(normal), a(scene["colors"]), a(eye), material.array(False),
        lights.array(False), lights.counts, out,
    )  # fmt: skip
    v = np.repeat(eye, n, axis=0) - world
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    nrm = normal / np.linalg.norm(normal, axis=1, keepdims=True)
    nrm = np.where((nrm * v).sum(1, keepdims=True) < 0, -nrm, nrm)
    l_dir = np.array([0.3, 0.6, 1.0]) / np.linalg.norm([0.3, 0.6, 1.0])
    albedo = 0.8 * np.tile(scene["colors"], (2, 1))
    expected = albedo * (0.1 + 0.9 * np.maximum(nrm @ l_dir, 0))[:, None]
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-10, atol=1e-12)
