"""Soft mode on degenerate scenes (issue 17): the loss and every gradient stay finite
(and, as a guard, in the other modes too).

A vertex exactly at the camera centre, the camera inside the mesh, edge-on, zero-area
and near-plane-crossing faces, coincident vertices, a zero normal and faces behind the
camera, each rendered at 32² by one shared renderer per mode with point and directional
lights; the loss weights the image and the coverage."""

import numpy as np
import pytest
import taichi as ti

import taichi_dr
from taichi_dr import backend
from taichi_dr.camera import Camera
from taichi_dr.render import arrays
from taichi_dr.render.pipeline import MODES
from taichi_dr.scene import Mesh

SIZE = 32
EYE = (0.0, 0.0, 3.0)  # axis-aligned: the view matrix, and so the camera centre, is exact


@ti.kernel
def _loss(image: arrays.Vec3, alpha: arrays.Real, weights: arrays.Vec3, loss: ti.types.ndarray()):
    for i in range(image.shape[0]):
        loss[None] += (image[i] * weights[i]).sum() + alpha[i] * weights[i][0]


def _sphere(camera=EYE):
    m = taichi_dr.icosphere(1)
    return m.vertices.copy(), m.faces.copy(), camera


def vertex_at_eye():
    v, f, eye = _sphere()
    v[np.argmax(v[:, 2])] = eye  # the vertex nearest the camera, moved onto its centre
    return v, f, None, eye


def vertex_at_eye_off_axis():
    v, f, _ = _sphere()
    eye = (1.5, 1.0, 2.5)
    v[np.argmax(v @ np.array(eye))] = eye
    return v, f, None, eye


def camera_inside():
    v, f, _ = _sphere()
    return v, f, None, (0.1, 0.05, 0.2)


def _with_faces(extra_v, extra_f, normals=None):
    v, f, eye = _sphere()
    n = len(v)
    return np.concatenate([v, extra_v]), np.concatenate([f, np.asarray(extra_f) + n]), normals, eye


def edge_on():
    # the plane y = 0.1 x holds the camera centre: the face projects onto a line
    return _with_faces([[-0.8, -0.08, 1.6], [0.8, 0.08, 1.6], [0.0, 0.0, 1.2]], [[0, 1, 2]])


def zero_area():
    # two coincident vertices, then three collinear ones, in front of the sphere
    pts = [[0.2, 0.2, 1.5], [0.2, 0.2, 1.5], [-0.3, 0.1, 1.5], [-0.4, -0.3, 1.4], [0.0, 0.0, 1.4]]
    pts.append([0.4, 0.3, 1.4])
    return _with_faces(pts, [[0, 1, 2], [3, 4, 5]])


def coincident_vertices():
    v, f, _, eye = vertex_at_eye()
    v[f[0, 1]] = v[f[0, 0]]  # one edge collapsed: its two faces have zero area
    v[f[5]] = v[f[5, 2]]  # a whole face at one point
    return v, f, None, eye


def zero_normal():
    v, f, _, eye = zero_area()
    normals = Mesh(v, f).normals
    normals[[0, -1]] = 0.0
    return v, f, normals, eye


def behind_camera():
    # one face wholly behind the camera, one crossing the camera plane, one crossing the
    # near plane (0.5 in front of the camera)
    pts = [[0.3, 0.2, 3.5], [-0.3, 0.1, 3.6], [0.0, -0.3, 3.4]]
    pts += [[0.5, 0.5, 3.5], [-0.4, 0.3, 2.0], [0.2, -0.4, 2.2]]
    pts += [[0.3, 0.0, 2.7], [-0.3, 0.2, 2.2], [0.0, -0.2, 2.2]]
    return _with_faces(pts, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])


LIGHTS = dict(
    ambient=(0.1, 0.1, 0.1),
    directional=[((0.3, 0.5, 1.0), (0.8, 0.8, 0.8))],
    point=[((0.5, 0.8, 2.0), (2.0, 2.0, 2.0))],
)
CASES = [
    vertex_at_eye,
    vertex_at_eye_off_axis,
    camera_inside,
    edge_on,
    zero_area,
    coincident_vertices,
    zero_normal,
    behind_camera,
]


@pytest.fixture(scope="module", params=MODES)
def renderer(request):
    from conftest import shared_renderer

    v, f, _ = _sphere()
    cam = Camera.look_at(eye=EYE, fov=45, width=SIZE, height=SIZE, near=0.5, far=10.0)
    r = shared_renderer(Mesh(v, f), cam, mode=request.param)
    r.lights.reset(**LIGHTS)
    weights = np.random.default_rng(5).uniform(-1, 1, (SIZE * SIZE, 3))
    return r, arrays.from_numpy(weights)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_degenerate_scene_has_finite_gradients(renderer, case):
    r, weights = renderer
    vertices, faces, normals, eye = case()
    colors = np.random.default_rng(2).uniform(0.3, 1.0, (len(vertices), 3))
    r.set_mesh(Mesh(vertices, faces, normals), colors)
    r.set_camera(Camera.look_at(eye=eye, fov=45, width=SIZE, height=SIZE, near=0.5, far=10.0))
    loss = ti.ndarray(backend.real(), shape=(), needs_grad=True)
    r.rasterize()
    with ti.ad.Tape(loss):
        r.shade()
        _loss(r.image, r.alpha, weights, loss)
    assert np.isfinite(loss[None]) and loss[None] != 0.0
    assert np.isfinite(r.image.to_numpy()).all()
    grads = {
        "positions": r.mesh.positions.grad,
        "normals": r.mesh.normals.grad,
        "colors": r.mesh.colors.grad,
        "material": r.material.values.grad,
        "lights": r.lights.values.grad,
        "camera and pose": r.vertex.params.values.grad,
    }
    for name, g in grads.items():
        assert np.isfinite(g.to_numpy()).all(), name
    g_positions = grads["positions"].to_numpy()
    assert np.abs(g_positions).max() > 0  # the scene is seen
    if r.settings.mode == "soft":  # soft mode does not draw faces with a vertex at w ≤ 0
        at_eye = np.all(vertices == eye, axis=1)
        assert not g_positions[at_eye].any()


def test_smaller_mesh_after_larger_one(renderer):
    """The vertex stage's outputs shrink with the mesh (soft mode's per-vertex shading
    loops over them): a renderer that drew a larger mesh renders a smaller one like a
    fresh one."""
    from conftest import shared_renderer

    r, _ = renderer
    v, f, _, eye = behind_camera()
    r.set_mesh(Mesh(v, f))
    cam = Camera.look_at(eye=EYE, fov=45, width=SIZE, height=SIZE, near=0.5, far=10.0)
    r.set_camera(cam)
    r.render()
    sphere = taichi_dr.icosphere(1)
    r.set_mesh(sphere)
    got = r.render().image
    fresh = shared_renderer(sphere, cam, mode=r.settings.mode)
    fresh.lights.reset(**LIGHTS)
    expected = fresh.render().image
    np.testing.assert_array_equal(got, expected)
