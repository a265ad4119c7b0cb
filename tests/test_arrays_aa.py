"""Silhouettes, antialiasing and NMR as array operations (issue 13).

Float64 central-difference gradchecks of ``antialias`` (batches of views) and of the
hand-written crossing adjoint, any channel count, torch tensors, NMR's downhill step,
bad input. (Edges and images of whole renders: test_check_grads and test_render.)
"""

import numpy as np
import pytest
import reference
import taichi as ti

from taichi_dr import Camera
from taichi_dr.ad import gradcheck
from taichi_dr.errors import UserError
from taichi_dr.render import arrays
from taichi_dr.render.antialias import antialias, antialias_backward
from taichi_dr.render.nmr import nmr, nmr_backward
from taichi_dr.render.silhouette import crossing, crossing_grad, detect, edge_neighbours
from taichi_dr.scene import blob, icosphere, torus

W, H = 40, 32
VIEWS = [  # (mesh, eye): two views that differ in mesh and camera
    (lambda: blob(2), (0.4, 0.7, 2.6)),
    (lambda: torus(1.0, 0.4, 16, 8), (-1.2, 1.6, 2.2)),
]


class Batch:
    """The inputs of a batch of views as flat NumPy arrays (N = B·H·W pixels)."""

    def __init__(self, clip, faces, neighbours, ranges, tri, depth, color):
        self.frame = arrays.Frame(len(ranges), H, W)
        self.clip, self.faces, self.neighbours, self.ranges = clip, faces, neighbours, ranges
        self.tri, self.depth, self.color = tri, depth, color
        self.n_vertices = len(clip) // len(ranges)

    @classmethod
    def concatenated(cls, views):
        """One mesh made of the views' meshes; view b draws its own face range."""
        offset = [(v["f0"], v["v0"]) for v in views]
        ranges = np.array([(f0, len(v["faces"])) for (f0, _), v in zip(offset, views)], np.int32)
        n_vertices = sum(len(v["clip"]) for v in views)
        clip = np.full((len(views), n_vertices, 4), np.nan)  # vertices a view does not draw
        for b, v in enumerate(views):
            clip[b, v["v0"] : v["v0"] + len(v["clip"])] = v["clip"]
        return cls(
            clip.reshape(-1, 4),
            np.concatenate([v["faces"] + v["v0"] for v in views]),
            np.concatenate(
                [np.where(v["neighbours"] >= 0, v["neighbours"] + v["f0"], -1) for v in views]
            ),
            ranges,
            np.concatenate([np.where(v["tri"] >= 0, v["tri"] + v["f0"], -1) for v in views]),
            np.concatenate([v["depth"] for v in views]),
            np.concatenate([v["color"] for v in views]),
        )

    @classmethod
    def instanced(cls, mesh, eyes, color, shift=None):
        """B views of one mesh (face ranges (0, F)), rasterized by the float64 reference;
        ``shift`` (B, 2) moves each view's image by that many NDC units."""
        clip, tri, depth = [], [], []
        for b, eye in enumerate(eyes):
            cam = Camera.look_at(eye, (0, 0, 0), (0, 1, 0), 45.0, W, H, 0.5, 10.0)
            c = np.c_[mesh.vertices, np.ones(mesh.num_vertices)] @ cam.mvp.T
            if shift is not None:
                c[:, :2] += np.outer(c[:, 3], shift[b])
            t, _, z = reference.rasterize(c, mesh.faces, W, H)
            clip.append(c)
            tri.append(t.reshape(-1))
            depth.append(z.reshape(-1))
        F = mesh.num_faces
        return cls(
            np.concatenate(clip),
            mesh.faces.astype(np.int32),
            edge_neighbours(mesh.vertices, mesh.faces),
            np.array([(0, F)] * len(eyes), np.int32),
            np.concatenate(tri),
            np.concatenate(depth),
            color(np.concatenate(tri)),
        )

    def detect(self, clip=None):
        """(bits, edges) from :func:`detect` as NumPy arrays."""
        n, f = self.frame.pixels, len(self.faces)
        bits = arrays.empty(self.frame.views * f, dtype=ti.i32)
        edges = arrays.empty(2 * n, 3, ti.i32)
        detect(
            arrays.from_numpy(self.tri, ti.i32),
            arrays.from_numpy(self.depth),
            arrays.from_numpy(self.clip if clip is None else clip),
            arrays.from_numpy(self.faces, ti.i32),
            arrays.from_numpy(self.neighbours, ti.i32),
            arrays.from_numpy(self.ranges, ti.i32),
            self.frame,
            bits,
            edges,
        )
        return bits.to_numpy(), edges.to_numpy()


@ti.kernel
def _weighted_sum(image: arrays.Vec3, weights: arrays.Vec3, loss: arrays.Real):
    for i in range(image.shape[0]):
        loss[0] += image[i].dot(weights[i])


OPS = {"antialias": antialias, "nmr": nmr}


def _run_tape(op, batch, edges, weights, clip=None, color=None):
    """``op``'s image and the tape's gradients of Σ w · image w.r.t. colour and clip."""
    color = arrays.from_numpy(batch.color if color is None else color, grad=True)
    clip = arrays.from_numpy(batch.clip if clip is None else clip, grad=True)
    out = arrays.empty(batch.frame.pixels, 3, grad=True)
    loss = arrays.empty(1, grad=True)
    edges = arrays.from_numpy(edges, ti.i32)
    with ti.ad.Tape(loss):
        OPS[op](color, edges, clip, batch.frame, out)
        _weighted_sum(out, arrays.from_numpy(weights), loss)
    return out.to_numpy(), color.grad.to_numpy(), clip.grad.to_numpy()


# ------------------------------------------------------- the array ops on their own
EYES = ((0.5, 0.6, 2.4), (-1.4, 0.3, 2.0))  # B = 2 views of one mesh


def _white(tri):
    return np.repeat((tri >= 0)[:, None], 3, axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def scene():
    """Two views of a blob from the reference rasterizer, random colours per pixel."""
    rng = np.random.default_rng(11)
    return Batch.instanced(blob(2), EYES, lambda tri: rng.uniform(0.0, 1.0, (len(tri), 3)))


def test_antialias_gradcheck(scene, rng):
    """Central differences re-detect the edges at every step (and check that the step
    crossed no topology change): the visibility gradient reaches the silhouette vertices."""
    _, edges = scene.detect()
    crossed = np.nonzero(edges[:, 1] >= 0)[0]
    assert len(crossed) > 40 and len(np.unique(crossed // (2 * H * W))) == 2
    vertices = rng.choice(np.unique(edges[crossed, 1:]), 4, replace=False)
    pixels = rng.choice(np.unique(crossed // 2), 3, replace=False)
    picks = [("clip", v, c) for v in vertices for c in (0, 1, 3)]
    picks += [("color", p, c) for p in pixels for c in range(3)]
    weights = rng.uniform(-1, 1, scene.color.shape)

    def inputs(x):
        values = {"clip": scene.clip.copy(), "color": scene.color.copy()}
        for (name, row, col), value in zip(picks, x):
            values[name][row, col] = value
        return values

    def loss(x):
        values = inputs(x)
        _, found = scene.detect(values["clip"])
        assert np.array_equal(found, edges), "a step crossed a topology change"
        image, _, _ = _run_tape("antialias", scene, edges, weights, **values)
        return float((image * weights).sum())

    def grad(x):
        _, color_grad, clip_grad = _run_tape("antialias", scene, edges, weights, **inputs(x))
        grads = {"clip": clip_grad, "color": color_grad}
        return np.array([grads[name][row, col] for name, row, col in picks])

    x = np.array([getattr(scene, name)[row, col] for name, row, col in picks])
    g = grad(x)
    assert np.abs(g[: 3 * len(vertices)]).max() > 1e-2, "edges should move with their vertices"
    result = gradcheck(loss, grad, x)
    assert result.ok, result


@ti.kernel
def _crossings(
    c0: arrays.Vec4,
    c1: arrays.Vec4,
    where: arrays.IVec3,
    height: ti.i32,
    width: ti.i32,
    alpha: arrays.Real,
    g0: arrays.Vec4,
    g1: arrays.Vec4,
):
    for k in range(c0.shape[0]):
        y, x, front = where[k]
        for d in ti.static(range(2)):
            alpha[2 * k + d] = crossing(c0[k], c1[k], y, x, d, front, width, height)
            g0[2 * k + d], g1[2 * k + d] = crossing_grad(
                c0[k], c1[k], y, x, d, front, width, height
            )


def test_crossing_grad_matches_central_differences(rng):
    """NMR's hand-written adjoint of the crossing point, entry by entry."""
    m = 64
    w = rng.uniform(0.5, 3.0, (2, m, 1))
    c = np.concatenate([rng.uniform(-0.9, 0.9, (2, m, 2)) * w, rng.uniform(-1, 1, (2, m, 1)), w], 2)
    where = np.c_[rng.integers(0, H, m), rng.integers(0, W, m), rng.integers(0, 2, m)]

    def run(c):
        alpha, g0, g1 = arrays.empty(2 * m), arrays.empty(2 * m, 4), arrays.empty(2 * m, 4)
        _crossings(
            arrays.from_numpy(c[0]),
            arrays.from_numpy(c[1]),
            arrays.from_numpy(where, ti.i32),
            H,
            W,
            alpha,
            g0,
            g1,
        )
        return alpha.to_numpy(), np.stack([g0.to_numpy(), g1.to_numpy()])

    _, g = run(c)
    h = 1e-6
    for end in range(2):
        for j in range(4):
            step = np.zeros_like(c)
            step[end, :, j] = h
            fd = (run(c + step)[0] - run(c - step)[0]) / (2 * h)
            np.testing.assert_allclose(g[end, :, j], fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_nmr_step_lowers_the_loss():
    """Targets: each view's image moved by a few pixels. A step of one pixel along NMR's
    −gradient w.r.t. the image offset lowers each view's squared error, along +gradient
    it raises it."""
    mesh = icosphere(2)
    target = Batch.instanced(mesh, EYES, _white, shift=np.array([[0.12, 0.0], [0.0, -0.15]]))

    def loss(shift):
        image = Batch.instanced(mesh, EYES, _white, shift=shift).color.reshape(2, -1)
        return ((image - target.color.reshape(2, -1)) ** 2).sum(1)

    base = Batch.instanced(mesh, EYES, _white)
    _, edges = base.detect()
    clip_grad = arrays.empty(len(base.clip), 4)
    nmr_backward(
        arrays.from_numpy(base.color),
        arrays.from_numpy(edges, ti.i32),
        arrays.from_numpy(base.clip),
        base.frame,
        arrays.from_numpy(2 * (base.color - target.color)),
        clip_grad=clip_grad,
    )
    # the image offset t moves clip (x, y) by t·w: chain rule per view
    g = clip_grad.to_numpy().reshape(2, -1, 4)
    w = base.clip.reshape(2, -1, 4)[..., 3:]
    g_shift = (g[..., :2] * w).sum(1)
    step = 0.05 * g_shift / np.linalg.norm(g_shift, axis=1, keepdims=True)  # ~1 pixel
    before = loss(np.zeros((2, 2)))
    assert (before > 0).all()
    assert (loss(-step) < before).all()
    assert (loss(step) > before).all()


def test_any_channel_count_and_torch_tensors(scene, rng):
    """C = 4 colours blend like C = 3 channel by channel; torch tensors give the same
    edges and images; antialias_backward fills the tensors' .grad, nmr_backward takes
    torch gradients explicitly."""
    torch = pytest.importorskip("torch")
    _, edges = scene.detect()
    n, frame = scene.frame.pixels, scene.frame
    alpha = rng.uniform(0, 1, n)
    rgba = np.c_[scene.color, alpha]
    image, _, _ = _run_tape("antialias", scene, edges, np.zeros_like(scene.color))
    grey, _, _ = _run_tape(
        "antialias", scene, edges, np.zeros_like(scene.color), color=np.c_[alpha, alpha, alpha]
    )
    expected = np.c_[image, grey[:, 0]]
    assert np.abs(expected - rgba).max() > 1e-3, "edges should blend"
    out = arrays.empty(n, 4)
    edges_nd, clip_nd = arrays.from_numpy(edges, ti.i32), arrays.from_numpy(scene.clip)
    antialias(arrays.from_numpy(rgba), edges_nd, clip_nd, frame, out)
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-14)
    out_t = torch.empty(n, 4, dtype=torch.float64)
    clip_t = torch.from_numpy(scene.clip)
    edges_t = torch.empty(2 * n, 3, dtype=torch.int32)
    bits_t = torch.empty(2 * len(scene.faces), dtype=torch.int32)
    inputs = (scene.tri, scene.depth, scene.clip, scene.faces, scene.neighbours, scene.ranges)
    detect(*map(torch.from_numpy, inputs), frame, bits_t, edges_t)
    np.testing.assert_array_equal(edges_t.numpy(), edges)
    antialias(torch.from_numpy(rgba), edges_t, clip_t, frame, out_t)
    np.testing.assert_allclose(out_t.numpy(), expected, atol=1e-14)

    weights = rng.uniform(-1, 1, scene.color.shape)
    _, color_grad, clip_grad = _run_tape("antialias", scene, edges, weights)
    color_t = torch.tensor(scene.color, requires_grad=True)
    clip_g = torch.tensor(scene.clip, requires_grad=True)
    out_t = torch.zeros(n, 3, dtype=torch.float64, requires_grad=True)
    antialias(color_t.detach(), edges_t, clip_t, frame, out_t.detach())
    out_t.grad = torch.from_numpy(weights)
    color_t.grad, clip_g.grad = torch.zeros_like(color_t), torch.zeros_like(clip_g)
    antialias_backward(color_t, edges_t, clip_g, frame, out_t)
    np.testing.assert_allclose(color_t.grad.numpy(), color_grad, atol=1e-14)
    np.testing.assert_allclose(clip_g.grad.numpy(), clip_grad, atol=1e-12)

    _, color_grad, clip_grad = _run_tape("nmr", scene, edges, weights)
    color_grad_t = torch.zeros(n, 3, dtype=torch.float64)
    clip_grad_t = torch.zeros(len(scene.clip), 4, dtype=torch.float64)
    color_t = torch.from_numpy(scene.color)
    nmr_backward(
        color_t, edges_t, clip_t, frame, torch.from_numpy(weights), color_grad_t, clip_grad_t
    )
    assert np.abs(clip_grad).max() > 1e-3
    np.testing.assert_allclose(color_grad_t.numpy(), color_grad, atol=0)
    np.testing.assert_allclose(clip_grad_t.numpy(), clip_grad, atol=1e-12)


def test_bad_input(scene):
    _, edges = scene.detect()
    n, frame = scene.frame.pixels, scene.frame
    color, clip = arrays.from_numpy(scene.color), arrays.from_numpy(scene.clip)
    edges = arrays.from_numpy(edges, ti.i32)
    with pytest.raises(UserError, match="edges has 10 entries but needs"):
        antialias(color, arrays.empty(10, 3, dtype=ti.i32), clip, frame, arrays.empty(n, 3))
    with pytest.raises(UserError, match="image has 4 channels but color has 3"):
        antialias(color, edges, clip, frame, arrays.empty(n, 4))
    with pytest.raises(UserError, match=r"expected \(n, C\) vectors"):
        nmr(arrays.empty(n), edges, clip, frame, arrays.empty(n))
    tri, depth = arrays.from_numpy(scene.tri, ti.i32), arrays.from_numpy(scene.depth)
    faces = arrays.from_numpy(scene.faces, ti.i32)
    neighbours = arrays.from_numpy(scene.neighbours, ti.i32)
    ranges = arrays.from_numpy(scene.ranges, ti.i32)
    bits = arrays.empty(2 * len(scene.faces), dtype=ti.i32)
    with pytest.raises(UserError, match="not a multiple of 2 views"):
        detect(
            tri,
            depth,
            arrays.empty(len(scene.clip) + 1, 4),
            faces,
            neighbours,
            ranges,
            frame,
            bits,
            edges,
        )
    with pytest.raises(UserError, match="bits has"):
        detect(
            tri, depth, clip, faces, neighbours, ranges, frame, arrays.empty(3, dtype=ti.i32), edges
        )


def test_renderer_edges_from_zbuffer_keys_equal_those_from_eye_depth():
    """The renderer finds silhouette edges with the rasterizer's z-buffer keys as depths
    (no barycentric pass); a self-occluding torus and an occluded blob in two views give
    the same edges as eye-space depth from ``interpolate.barycentrics``."""
    from taichi_dr import Renderer, RenderSettings
    from taichi_dr.render import interpolate
    from taichi_dr.scene import Mesh, concatenate

    small = blob(2)
    front = Mesh(small.vertices * 0.4 + (0.3, 0.2, 0.9), small.faces)  # occludes the torus
    mesh = concatenate([torus(1.0, 0.4, 24, 12), front])[0]
    cams = [
        Camera.look_at(eye, (0, 0, 0), (0, 1, 0), 45.0, W, H, 0.5, 10.0)
        for eye in ((-1.2, 1.6, 2.2), (0.3, 0.4, 2.8))
    ]
    r = Renderer(mesh, cams, RenderSettings(mode="antialias"))
    r.rasterize()
    m, frame = r.mesh, r.frame
    bary, depth = arrays.empty(frame.pixels, 3), arrays.empty(frame.pixels)
    interpolate.barycentrics(
        r.vertex.clip, m.faces, r.triangle_id, frame, m.num_vertices, bary, depth
    )
    bits = arrays.empty(frame.views * m.num_faces, dtype=ti.i32)
    edges = arrays.empty(2 * frame.pixels, 3, ti.i32)
    detect(
        r.triangle_id, depth, r.vertex.clip, m.faces, m.neighbours, r._face_ranges(), frame,
        bits, edges,
    )  # fmt: skip
    found = r.pixels.edges.to_numpy()
    assert (found[:, 1] >= 0).sum() > 50  # silhouettes, including occluding ones
    np.testing.assert_array_equal(found, edges.to_numpy())
