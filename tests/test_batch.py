"""Batches of views: one call for B cameras equals B single-view renders (images and
gradients, every mode), per-view instances of one topology, bad input."""

import numpy as np
import pytest
import taichi as ti

from taichi_dr import Camera, Renderer, RenderSettings, UserError, losses
from taichi_dr.scene import blob

W, H = 20, 16
EYES = [(0.3, 0.5, 2.6), (-1.5, 0.8, 2.0), (1.8, -0.6, 1.9)]


def _cams(eyes=EYES):
    return [Camera.look_at(e, (0, 0, 0), (0, 1, 0), 45.0, W, H, 0.5, 10.0) for e in eyes]


def _gradients(r, weights):
    loss = losses.loss_array()
    r.rasterize()
    with ti.ad.Tape(loss=loss):
        r.shade()
        losses.mse_loss(r.image, weights, loss, weight=weights.size)
    return r.result().image, r.mesh.positions.grad.to_numpy(), r.material.grad("base_color")


@pytest.mark.parametrize("mode", ["hard", "antialias", "nmr", "soft"])
def test_batch_equals_single_views(mode, rng):
    mesh = blob(1)
    settings = RenderSettings(shading="blinn-phong", mode=mode, sigma=1e-3)
    weights = rng.uniform(-1, 1, (len(EYES), H, W, 3))
    batch = Renderer(mesh, _cams(), settings)
    image, g_pos, g_base = _gradients(batch, weights)
    assert image.shape == (len(EYES), H, W, 3)
    singles = [Renderer(mesh, cam, settings) for cam in _cams()]
    results = [_gradients(r, weights[b]) for b, r in enumerate(singles)]
    for b, (img, _, _) in enumerate(results):
        np.testing.assert_allclose(image[b], img, rtol=0, atol=1e-12)
    # a loss summed over the views: gradients add up (mse weight = count makes it a sum)
    np.testing.assert_allclose(g_pos, sum(r[1] for r in results), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_base, sum(r[2] for r in results), rtol=1e-9, atol=1e-12)


def test_instances_and_per_view_lights():
    mesh = blob(1)
    r = Renderer(mesh, _cams()[:2], RenderSettings("lambert"))
    moved = mesh.vertices + [0.2, 0.0, 0.0]
    r.set_positions(np.stack([mesh.vertices, moved]))
    r.set_lights_per_view()
    r.lights.set(view=1, ambient=(0.5, 0.5, 0.5))
    out = r.render()
    single = Renderer(mesh, _cams()[1], RenderSettings("lambert"))
    single.set_positions(moved)
    single.lights.set(ambient=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(out.image[1], single.render().image, atol=1e-12)


def test_per_view_light_counts_gradients(rng):
    """Light sets of different counts in one batch (the reverse pass then compiles every
    light slot) give the gradients of single views (whose reverse compiles their lights
    exactly, SH environment included)."""
    mesh = blob(1)
    settings = RenderSettings("lambert")
    second = dict(
        directional=[((-1.0, 0.2, 0.5), (0.4, 0.5, 0.6)), ((0.2, 1.0, 0.3), (0.3, 0.3, 0.2))],
        point=[((0.5, 1.5, 1.5), (2.0, 1.8, 1.5))],
        sh=rng.uniform(0.0, 0.2, (9, 3)),
    )
    weights = rng.uniform(-1, 1, (2, H, W, 3))
    batch = Renderer(mesh, _cams()[:2], settings)
    batch.set_lights_per_view()
    batch.lights.set(view=1, **second)
    _, g_pos, g_base = _gradients(batch, weights)
    singles = [Renderer(mesh, cam, settings) for cam in _cams()[:2]]
    singles[1].lights.set(**second)
    results = [_gradients(r, weights[b]) for b, r in enumerate(singles)]
    np.testing.assert_allclose(g_pos, sum(r[1] for r in results), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_base, sum(r[2] for r in results), rtol=1e-9, atol=1e-12)


def test_positions_only_gradients_equal_all_groups(rng):
    """``grads=("positions",)`` (the vertex stage then transforms with gradient-less
    matrices) gives the positions gradient of ``grads="all"``."""
    mesh = blob(1)
    weights = rng.uniform(-1, 1, (2, H, W, 3))
    g = [
        _gradients(Renderer(mesh, _cams()[:2], RenderSettings(grads=grads)), weights)[1]
        for grads in ("all", ("positions",))
    ]
    assert np.abs(g[0]).max() > 0
    np.testing.assert_allclose(g[1], g[0], rtol=1e-12, atol=1e-14)


def test_bad_batches():
    mesh = blob(1)
    r = Renderer(mesh, _cams(), RenderSettings())
    with pytest.raises(UserError, match="3 views"):
        r.set_positions(np.zeros((2, mesh.num_vertices, 3)))
    with pytest.raises(UserError, match="share a resolution"):
        Renderer(mesh, [*_cams()[:1], Camera.look_at((0, 0, 3), width=8, height=8)])
    with pytest.raises(UserError, match="non-empty sequence"):
        Renderer(mesh, [])
    r.set_positions(np.zeros((3, mesh.num_vertices, 3)) + mesh.vertices)
    with pytest.raises(UserError, match="position instances"):
        r.set_camera(_cams()[:2])


def test_meshes_of_a_batch_by_face_ranges():
    """Two meshes concatenated into one; view b draws mesh b (its face range) and equals a
    single render of that mesh alone."""
    from taichi_dr.scene import concatenate, torus

    meshes = [blob(1), torus(0.8, 0.3, 12, 6)]
    both, ranges = concatenate(meshes)
    r = Renderer(both, _cams()[:2], RenderSettings("lambert", mode="antialias"))
    r.set_face_ranges(ranges)
    out = r.render()
    for b, mesh in enumerate(meshes):
        alone = Renderer(mesh, _cams()[b], RenderSettings("lambert", mode="antialias")).render()
        np.testing.assert_allclose(out.image[b], alone.image, atol=1e-12)
        ids = out.triangle_id[b]
        np.testing.assert_array_equal(np.where(ids >= 0, ids - ranges[b, 0], -1), alone.triangle_id)
    with pytest.raises(UserError, match="within the mesh"):
        r.set_face_ranges([[0, 10**6], [0, 1]])
    with pytest.raises(UserError, match="2 integer rows"):
        r.set_face_ranges([[0, 1]])
