"""The committed example meshes: reproducible from assets/make_assets.py, loadable, closed
with the right topology, outward-facing, and (for the blob) non-convex."""

import importlib.util
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from taichi_dr import load_mesh
from taichi_dr.io import to_uint8
from taichi_dr.scene import blob, checker_texture, large_mesh

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EULER = {"sphere": 2, "blob": 2, "torus": 0, "textured": 2}


def signed_volume(v, f):
    t = v[f]
    return np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6


def test_regenerating_assets_gives_identical_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_assets", ASSETS / "make_assets.py")
    make_assets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_assets)
    written = make_assets.main(["--out", str(tmp_path)])
    assert sorted(p.name for p in written) == sorted(
        p.name for p in ASSETS.iterdir() if p.suffix in (".obj", ".mtl", ".png")
    )
    for new in written:
        old = ASSETS / new.name
        if new.suffix == ".png":  # encoder bytes may vary between Pillow versions; pixels not
            np.testing.assert_array_equal(iio.imread(new), iio.imread(old))
        else:
            assert new.read_bytes() == old.read_bytes(), new.name
    assert sum(p.stat().st_size for p in written) < 2_000_000


@pytest.mark.parametrize("name", sorted(EULER))
def test_asset_loads_closed_and_outward(name):
    m = load_mesh(ASSETS / f"{name}.obj")
    # UV seams duplicate vertices: weld by position before checking topology
    welded = trimesh.Trimesh(m.vertices, m.faces, process=name == "textured")
    assert welded.is_watertight
    assert welded.euler_number == EULER[name]
    assert signed_volume(m.vertices, m.faces) > 0  # counter-clockwise seen from outside
    np.testing.assert_allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-7)
    t = m.vertices[m.faces]
    face_n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    assert np.all(np.einsum("fkj,fj->fk", m.normals[m.faces], face_n) > 0)


def test_analytic_volumes():
    sphere, torus = load_mesh(ASSETS / "sphere.obj"), load_mesh(ASSETS / "torus.obj")
    assert signed_volume(sphere.vertices, sphere.faces) == pytest.approx(4 / 3 * np.pi, rel=0.02)
    R, r = 1.0, 0.4
    expected = 2 * np.pi**2 * R * r**2
    assert signed_volume(torus.vertices, torus.faces) == pytest.approx(expected, rel=0.03)


def test_blob_is_non_convex_with_bounded_radius():
    m = load_mesh(ASSETS / "blob.obj")
    volume = signed_volume(m.vertices, m.faces)
    hull = trimesh.Trimesh(m.vertices, m.faces).convex_hull.volume
    assert volume < 0.9 * hull
    radius = np.linalg.norm(m.vertices, axis=1)
    assert 0.6 - 1e-9 <= radius.min() and radius.max() <= 1.4 + 1e-9
    sphere = load_mesh(ASSETS / "sphere.obj")  # control: a convex mesh fills its hull
    assert signed_volume(sphere.vertices, sphere.faces) == pytest.approx(
        trimesh.Trimesh(sphere.vertices, sphere.faces).convex_hull.volume, rel=1e-9
    )


def test_textured_asset_has_uvs_and_texture():
    m = load_mesh(ASSETS / "textured.obj")
    assert m.texture.shape == (256, 256, 3) and m.texture.dtype == np.float32
    # the PNG holds the 8-bit sRGB encoding of the procedural linear texture
    np.testing.assert_array_equal(to_uint8(m.texture), to_uint8(checker_texture(256)))
    assert m.uvs.min() >= 0 and m.uvs.max() <= 1
    # v is up: the north pole (+y) samples the top row of the image (v = 1)
    np.testing.assert_allclose(m.uvs[np.argmax(m.vertices[:, 1]), 1], 1.0)
    # longitude u grows with the azimuth atan2(x, z)
    ring = np.abs(m.vertices[:, 1]) < 0.07
    azimuth = np.arctan2(m.vertices[ring, 0], m.vertices[ring, 2]) % (2 * np.pi)
    u = m.uvs[ring, 0]
    inner = (u > 1e-9) & (u < 1 - 1e-9)
    np.testing.assert_allclose(azimuth[inner], 2 * np.pi * u[inner], atol=1e-7)


def test_blob_is_deterministic_and_seeded():
    a, b, c = blob(2, seed=1), blob(2, seed=1), blob(2, seed=2)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert not np.allclose(a.vertices, c.vertices)


def test_large_mesh_size():
    assert large_mesh(min_faces=5000).num_faces == 5120
    m = large_mesh()
    assert m.num_faces == 327_680 and m.faces.max() < m.num_vertices
