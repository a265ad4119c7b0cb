"""Silhouettes, antialiasing and NMR as array operations (issue 13).

Old vs new: a batch of B = 2 views of two different meshes (one concatenated mesh with
per-view face ranges) against two single-view renders of the field-based classes —
edges identical, images and gradients equal. Then the array ops on their own (these stay
when the old classes go): float64 central-difference gradchecks of ``antialias`` and of
the hand-written crossing adjoint, any channel count, torch tensors, NMR's downhill step,
bad input.
"""

import numpy as np
import pytest
import taichi as ti
from conftest import shared_renderer

from taichi_dr import Camera
from taichi_dr.render import arrays
from taichi_dr.render.antialias import antialias
from taichi_dr.render.nmr import nmr
from taichi_dr.render.silhouette import detect
from taichi_dr.scene import blob, torus

W, H = 40, 32  # the shared renderer of test_raster: no extra compile of the old classes
VIEWS = [  # (mesh, eye): two views that differ in mesh and camera
    (lambda: blob(2), (0.4, 0.7, 2.6)),
    (lambda: torus(1.0, 0.4, 16, 8), (-1.2, 1.6, 2.2)),
]


class Batch:
    """Inputs and outputs of a batch of views, as flat NumPy arrays (N = B·H·W)."""

    def __init__(self, views):
        self.frame = arrays.Frame(len(views), H, W)
        self.faces = np.concatenate([v["faces"] + v["v0"] for v in views])
        self.neighbours = np.concatenate(
            [np.where(v["neighbours"] >= 0, v["neighbours"] + v["f0"], -1) for v in views]
        )
        self.ranges = np.array([(v["f0"], len(v["faces"])) for v in views], np.int32)
        n_vertices = sum(len(v["clip"]) for v in views)
        # per view all vertices of the concatenated mesh; those it does not draw are NaN
        self.clip = np.full((len(views), n_vertices, 4), np.nan)
        for b, v in enumerate(views):
            self.clip[b, v["v0"] : v["v0"] + len(v["clip"])] = v["clip"]
        self.clip = self.clip.reshape(-1, 4)
        self.tri = np.concatenate([np.where(v["tri"] >= 0, v["tri"] + v["f0"], -1) for v in views])
        self.depth = np.concatenate([v["depth"] for v in views])
        self.color = np.concatenate([v["color"] for v in views])
        self.n_vertices = n_vertices

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


def _flat(a):
    return a.reshape(H * W, *a.shape[2:])


@pytest.fixture(scope="module")
def old():
    """Per view: inputs and the old classes' outputs (edges, images, gradients for the
    loss Σ w · image)."""
    views, v0, f0 = [], 0, 0
    rng = np.random.default_rng(7)
    for make, eye in VIEWS:
        mesh = make()
        cam = Camera.look_at(eye, (0, 0, 0), (0, 1, 0), 45.0, W, H, 0.5, 10.0)
        r = shared_renderer(mesh, cam, mode="antialias", shading="lambert")
        nv, nf = mesh.num_vertices, mesh.num_faces
        r.rasterize()
        r.shade()
        w = rng.uniform(-1, 1, (H, W, 3))
        view = dict(
            faces=mesh.faces.astype(np.int32),
            neighbours=r.neighbours.to_numpy()[:nf],
            clip=r.vertex.clip.to_numpy()[:nv],
            tri=_flat(r.raster.triangle_id.to_numpy()),
            depth=_flat(r.interp.depth.to_numpy()),
            color=_flat(r.compositor.image.to_numpy()),
            edges=r.silhouettes.edges.to_numpy(),
            silhouette=r.silhouettes.silhouette.to_numpy()[:nf],
            weights=_flat(w),
            v0=v0,
            f0=f0,
        )
        color, edges, clip = r.compositor.image, r.silhouettes.edges, r.vertex.clip
        for name, stage in (("antialias", r.antialias), ("nmr", r.nmr)):
            stage.forward(color, edges, clip)
            view[name] = _flat(stage.image.to_numpy())
            for field in (color, clip, stage.image):
                field.grad.fill(0)
            stage.image.grad.from_numpy(w)
            if name == "antialias":
                stage._blend.grad(color, edges, clip)
                stage._copy.grad(color)
            else:
                stage._backward(color, edges, clip)
            view[name + "_color_grad"] = _flat(color.grad.to_numpy())
            view[name + "_clip_grad"] = clip.grad.to_numpy()[:nv]
        views.append(view)
        v0, f0 = v0 + nv, f0 + nf
    return views


@pytest.fixture(scope="module")
def batch(old):
    return Batch(old)


def test_edges_equal_old(old, batch):
    bits, edges = batch.detect()
    edges = edges.reshape(2, H, W, 2, 3)
    for b, view in enumerate(old):
        expected = view["edges"].copy()
        found = expected[..., 1] >= 0
        assert found.sum() > 20, "the view should have silhouette pairs"
        expected[..., 1:][found] += b * batch.n_vertices + view["v0"]  # into the batch's clip
        np.testing.assert_array_equal(edges[b], expected)
        f0, nf = batch.ranges[b]
        np.testing.assert_array_equal(
            bits[b * len(batch.faces) :][f0 : f0 + nf] & 7, view["silhouette"]
        )


@ti.kernel
def _weighted_sum(image: arrays.Vec3, weights: arrays.Vec3, loss: arrays.Real):
    for i in range(image.shape[0]):
        loss[0] += image[i].dot(weights[i])


OPS = {"antialias": antialias, "nmr": nmr}


def _run_tape(op, batch, edges, weights, clip=None):
    """``op``'s image and the tape's gradients of Σ w · image w.r.t. colour and clip."""
    color = arrays.from_numpy(batch.color, grad=True)
    clip = arrays.from_numpy(batch.clip if clip is None else clip, grad=True)
    out = arrays.empty(batch.frame.pixels, 3, grad=True)
    loss = arrays.empty(1, grad=True)
    edges = arrays.from_numpy(edges, ti.i32)
    with ti.ad.Tape(loss):
        OPS[op](color, edges, clip, batch.frame, out)
        _weighted_sum(out, arrays.from_numpy(weights), loss)
    return out.to_numpy(), color.grad.to_numpy(), clip.grad.to_numpy()


@pytest.mark.parametrize("op", ["antialias", "nmr"])
def test_images_and_gradients_equal_old(old, batch, op):
    _, edges = batch.detect()
    weights = np.concatenate([v["weights"] for v in old])
    image, color_grad, clip_grad = _run_tape(op, batch, edges, weights)
    n, V = H * W, batch.n_vertices
    touched = np.zeros(len(clip_grad), bool)
    for b, view in enumerate(old):
        pixels = slice(b * n, (b + 1) * n)
        if op == "antialias":
            assert np.abs(view["antialias"] - view["color"]).max() > 1e-3, "edges should blend"
        np.testing.assert_allclose(image[pixels], view[op], rtol=0, atol=1e-12)
        np.testing.assert_allclose(color_grad[pixels], view[op + "_color_grad"], atol=1e-12)
        rows = slice(b * V + view["v0"], b * V + view["v0"] + len(view["clip"]))
        assert np.abs(view[op + "_clip_grad"]).max() > 1e-3, "edges should move"
        np.testing.assert_allclose(clip_grad[rows], view[op + "_clip_grad"], rtol=1e-10, atol=1e-10)
        touched[rows] = True
    assert (clip_grad[~touched] == 0).all(), "vertices a view does not draw get no gradient"
