"""Visibility against an independent float64 reference: coverage, triangle id and depth
pixel-exact; no cracks or double coverage; perspective-correct interpolation."""

import numpy as np
import pytest
import reference
import taichi as ti
from conftest import shared_renderer

from taichi_dr import Camera
from taichi_dr.render import arrays
from taichi_dr.render.arrays import Frame
from taichi_dr.render.raster import Rasterizer
from taichi_dr.scene import blob, icosphere, torus

W, H = 40, 32


def _renderer(mesh, eye, center=(0, 0, 0), fov=50.0, near=0.1, cull="none"):
    cam = Camera.look_at(eye, center, (0, 1, 0), fov, W, H, near, 50.0)
    return shared_renderer(mesh, cam, cull=cull)


def _check_against_reference(r, cull="none"):
    r.rasterize(count=True)
    clip = r.vertex.clip.to_numpy()
    faces = r.mesh.faces.to_numpy()
    tid, count, _ = reference.rasterize(clip, faces, r.width, r.height, cull)
    got = r.triangle_id.to_numpy().reshape(r.height, r.width)
    assert (got >= 0).any(), "scene should cover some pixels"
    np.testing.assert_array_equal(got, tid)
    np.testing.assert_array_equal(r.raster.fragments.to_numpy().reshape(r.height, r.width), count)
    return got


MESHES = {
    "sphere": lambda: icosphere(2),
    "blob": lambda: blob(2),
    "torus": lambda: torus(1.0, 0.4, 16, 8),
}


@pytest.mark.parametrize("name", sorted(MESHES))
def test_matches_reference_random_cameras(name, rng):
    mesh = MESHES[name]()
    r = _renderer(mesh, (0, 0, 3))
    for _ in range(3):
        d = rng.normal(size=3)
        eye = d / np.linalg.norm(d) * rng.uniform(2.2, 4.0)
        r.set_camera(
            Camera.look_at(
                eye, rng.uniform(-0.3, 0.3, 3), (0, 1, 0), rng.uniform(30, 70), W, H, 0.1, 50.0
            )
        )
        _check_against_reference(r)


@pytest.mark.parametrize("cull", ["back", "front"])
def test_culling_matches_reference(cull):
    r = _renderer(torus(1.0, 0.4, 16, 8), (0.3, 1.5, 2.5), cull=cull)
    _check_against_reference(r, cull)


def test_near_plane_clipping_keeps_crossing_triangles():
    # camera inside a large sphere: every visible triangle crosses or lies near the near plane
    mesh = icosphere(2, radius=1.0)
    r = _renderer(mesh, (0.0, 0.0, 0.95), center=(0.0, 0.0, -1.0), fov=120.0, near=0.8)
    r.rasterize()
    c = r.vertex.clip.to_numpy()
    f = mesh.faces
    d = c[f][..., 2] + c[f][..., 3]
    crossing = np.nonzero((d.min(1) < 0) & (d.max(1) >= 0))[0]
    got = _check_against_reference(r)
    assert np.isin(crossing, got).any(), "some near-crossing triangle must be visible"
    assert (got < 0).any(), "the corners look at the part cut away by the near plane"


def test_mesh_larger_than_screen():
    r = _renderer(icosphere(3), (0.0, 0.0, 1.3), fov=60.0)
    got = _check_against_reference(r)
    assert (got >= 0).all()


def _grid_quad(n, W_, H_):
    """A fine grid of 2n² triangles covering more than the screen, with vertices (and so
    edges and diagonals) exactly on pixel centres."""
    xs = np.linspace(-2.5, W_ + 1.5, n + 1)
    ys = np.linspace(-2.5, H_ + 1.5, n + 1)
    X, Y = np.meshgrid(xs, ys)
    ndc = np.stack([X.ravel() / W_ * 2 - 1, 1 - Y.ravel() / H_ * 2], 1)
    clip = np.c_[ndc, np.zeros(len(ndc)), np.ones(len(ndc))]
    k = np.arange(n * n)
    i, j = k // n, k % n
    v00, v01 = i * (n + 1) + j, i * (n + 1) + j + 1
    v10, v11 = v00 + n + 1, v01 + n + 1
    faces = np.concatenate([np.c_[v00, v10, v11], np.c_[v00, v11, v01]])
    return clip, faces.astype(np.int32)


@pytest.mark.parametrize(
    "n, size, serial_scan",
    [(7, 22, None), (22, 22, None), (22, 22, False), (2, 80, None), (2, 80, True)],
)
def test_no_cracks_no_double_coverage(n, size, serial_scan):
    """size 22: small triangles, drawn at setup; 80: large ones, drawn through the tile
    work list, allocated by atomic adds (default) or a serial scan (serial_scan=True)."""
    # grid pitch of 1 pixel for n = 22, 42 for n = 2 at 80: edges through pixel centres
    w, h = size, size
    clip, faces = _grid_quad(n, w, h)
    rast = Rasterizer(serial_scan=serial_scan)
    ranges = arrays.from_numpy(np.array([[0, len(faces)]], np.int32), dtype=ti.i32)
    faces_array = arrays.from_numpy(faces, dtype=ti.i32)
    rast.forward(
        arrays.from_numpy(clip), faces_array, ranges, Frame(1, h, w), len(clip), count=True
    )
    counts = rast.fragments.to_numpy().reshape(h, w)
    assert counts.min() == 1 and counts.max() == 1, np.unique(counts, return_counts=True)
    # and the reference rasterizer agrees on the owner of every pixel
    tid, _, _ = reference.rasterize(clip, faces, w, h)
    np.testing.assert_array_equal(rast.triangle_id.to_numpy().reshape(h, w), tid)


def test_depth_and_perspective_correct_interpolation():
    """A tilted plane: depth and an interpolated world coordinate against ray casting."""
    from taichi_dr.scene import Mesh

    verts = np.array([[-3, -1, 0.5], [3, -1, 0.5], [3, 1, -4.0], [-3, 1, -4.0]], float)
    mesh = Mesh(verts, np.array([[0, 1, 2], [0, 2, 3]]))
    eye = np.array([0.2, 0.1, 2.0])
    r = _renderer(mesh, eye, center=(0, 0, -1), fov=60.0)
    out = r.render()
    cam = r.camera
    inv = np.linalg.inv(cam.proj @ cam.view)
    n = np.cross(verts[1] - verts[0], verts[2] - verts[0])
    ys, xs = np.nonzero(out.mask)
    assert len(ys) > 100
    ndc = np.stack([(xs + 0.5) / W * 2 - 1, 1 - (ys + 0.5) / H * 2], 1)
    far_pt = inv @ np.c_[ndc, np.ones(len(ndc)), np.ones(len(ndc))].T
    d = (far_pt[:3] / far_pt[3]).T - eye
    t = ((verts[0] - eye) @ n) / (d @ n)
    hit = eye + t[:, None] * d
    eye_z = -(cam.view @ np.c_[hit, np.ones(len(hit))].T)[2]
    np.testing.assert_allclose(out.depth[ys, xs], eye_z, rtol=1e-9)
    position = r.pixels.position.to_numpy().reshape(H, W, 3)
    np.testing.assert_allclose(position[ys, xs], hit, atol=1e-9)
    assert np.isinf(out.depth[~out.mask]).all()
    assert (out.triangle_id[~out.mask] == -1).all()


def test_deterministic():
    r = _renderer(blob(2), (1.0, 1.0, 2.5))
    a = r.render()
    b = r.render()
    np.testing.assert_array_equal(a.triangle_id, b.triangle_id)
    np.testing.assert_array_equal(a.image, b.image)
