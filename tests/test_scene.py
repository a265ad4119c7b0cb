"""Mesh loading and validation: every format round-trips through trimesh's exporters, glTF
scene graphs flatten with their node transforms, textures and UVs load, bad input fails
with a UserError that names the problem."""

import numpy as np
import pytest
import trimesh
from PIL import Image

from taichi_dr import UserError, load_mesh
from taichi_dr.io import srgb_to_linear
from taichi_dr.scene import (
    Mesh,
    distinct_faces,
    icosphere,
    torus,
    validate_mesh,
    validate_texture,
)

FORMATS = ["obj", "ply", "stl", "off", "glb", "gltf"]
WITH_NORMALS = {"obj", "ply", "glb", "gltf"}
WITH_UVS = {"obj", "ply", "glb", "gltf"}
WITH_TEXTURE = {"obj", "glb", "gltf"}


def area_weighted_normals(v, f):
    """Independent NumPy reference: sum of face cross products at each vertex, normalised."""
    n = np.zeros_like(v)
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for face, c in zip(f, cross):
        n[face] += c
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def export(geometry, path):
    """Write a trimesh Trimesh or Scene; glTF's separate buffers/images go beside the file."""
    if path.suffix == ".gltf":
        scene = geometry if isinstance(geometry, trimesh.Scene) else geometry.scene()
        for name, data in trimesh.exchange.gltf.export_gltf(scene).items():
            (path.parent / (path.name if name == "model.gltf" else name)).write_bytes(data)
    elif path.suffix == ".obj":
        geometry.export(path, include_normals=True)
    elif path.suffix == ".ply":
        geometry.export(path, vertex_normal=True)
    else:
        geometry.export(path)
    return path


@pytest.fixture(scope="module")
def source():
    """Icosphere with exact normals, random UVs and an 8x16 sRGB texture."""
    rng = np.random.default_rng(7)
    s = icosphere(2)
    image = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    tm = trimesh.Trimesh(s.vertices, s.faces, vertex_normals=s.normals, process=False)
    uv = rng.random((s.num_vertices, 2))
    tm.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(image))
    return tm, s, uv, image


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_round_trip(fmt, source, tmp_path):
    tm, s, uv, image = source
    m = load_mesh(export(tm, tmp_path / f"mesh.{fmt}"))
    assert m.vertices.dtype == np.float64 and m.faces.dtype == np.int32
    assert (m.num_vertices, m.num_faces) == (s.num_vertices, s.num_faces)  # STL welded back
    np.testing.assert_allclose(m.vertices[m.faces], s.vertices[s.faces], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-12)
    expected = s.normals if fmt in WITH_NORMALS else area_weighted_normals(s.vertices, s.faces)
    np.testing.assert_allclose(m.normals[m.faces], expected[s.faces], atol=1e-6)
    if fmt in WITH_UVS:
        np.testing.assert_allclose(m.uvs[m.faces], uv[s.faces], atol=1e-6)
    else:
        assert m.uvs is None
    if fmt in WITH_TEXTURE:
        assert m.texture.shape == (8, 16, 3) and m.texture.dtype == np.float32
        np.testing.assert_allclose(m.texture, srgb_to_linear(image / 255.0), atol=1e-6)
    else:
        assert m.texture is None


def test_gltf_scene_flattens_node_transforms(tmp_path):
    sphere, ring = icosphere(1), torus(1.0, 0.3, 12, 8)
    c, s = np.cos(0.7), np.sin(0.7)
    A1 = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, 2.0, 0.5])
    A2 = np.diag([-1.5, 1.5, 1.5])  # mirror: the winding must be flipped back
    scene = trimesh.Scene()
    for mesh, A, t, node in [(sphere, A1, [3, 0, 0], "a"), (ring, A2, [-3, 1, 0], "b")]:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = A, t
        tm = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=mesh.normals, process=False)
        scene.add_geometry(tm, node_name=node, geom_name=node, transform=T)
    m = load_mesh(export(scene, tmp_path / "scene.glb"))

    pa = sphere.vertices @ A1.T + [3, 0, 0]
    pb = ring.vertices @ A2.T + [-3, 1, 0]
    is_a = np.zeros(m.num_vertices, dtype=bool)  # nodes may come in either order
    if np.allclose(m.vertices[: len(pa)], pa, atol=1e-5):
        is_a[: len(pa)] = True
    else:
        is_a[len(pb) :] = True
    np.testing.assert_allclose(m.vertices[is_a], pa, atol=1e-5)
    np.testing.assert_allclose(m.vertices[~is_a], pb, atol=1e-5)
    # sphere part: the normal of the ellipsoid |A1⁻¹(p − t)| = 1 is A1⁻ᵀ A1⁻¹ (p − t)
    B = np.linalg.inv(A1)
    g = (m.vertices[is_a] - [3, 0, 0]) @ (B.T @ B).T
    np.testing.assert_allclose(m.normals[is_a], g / np.linalg.norm(g, axis=1)[:, None], atol=1e-5)
    # torus part, mirrored: normals are mirrored, faces still counter-clockwise from outside
    np.testing.assert_allclose(m.normals[~is_a], ring.normals * [-1, 1, 1], atol=1e-5)
    tri = m.vertices[m.faces]
    signed = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6
    in_a = is_a[m.faces[:, 0]]
    vol_sphere = trimesh.Trimesh(sphere.vertices, sphere.faces).volume
    vol_ring = trimesh.Trimesh(ring.vertices, ring.faces).volume
    assert signed[in_a].sum() == pytest.approx(vol_sphere * abs(np.linalg.det(A1)), rel=1e-5)
    assert signed[~in_a].sum() == pytest.approx(vol_ring * abs(np.linalg.det(A2)), rel=1e-5)


SEAM_OBJ = """mtllib seam.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vt 0.5 0.5
usemtl m
f 1/1 2/2 3/3
f 1/5 3/3 4/4
"""


def write_seam_obj(tmp_path, image: np.ndarray):
    (tmp_path / "seam.obj").write_text(SEAM_OBJ)
    (tmp_path / "seam.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd seam.png\n")
    Image.fromarray(image).save(tmp_path / "seam.png")
    return tmp_path / "seam.obj"


def test_obj_mtl_png_keeps_uv_seams_and_texture(tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (4, 8, 3), dtype=np.uint8)
    m = load_mesh(write_seam_obj(tmp_path, image))
    assert m.num_vertices == 5  # vertex 1 has two UVs: split along the seam
    corner_uvs = [[[0, 0], [1, 0], [1, 1]], [[0.5, 0.5], [1, 1], [0, 1]]]
    np.testing.assert_allclose(m.uvs[m.faces], corner_uvs)
    np.testing.assert_allclose(m.vertices[m.faces][1, 0], [0, 0, 0])
    np.testing.assert_allclose(m.normals, np.tile([0, 0, 1.0], (5, 1)))
    np.testing.assert_allclose(m.texture, srgb_to_linear(image / 255.0), atol=1e-6)


def test_texture_argument_overrides_file(tmp_path):
    path = write_seam_obj(tmp_path, np.zeros((4, 4, 3), np.uint8))
    override = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_array_equal(load_mesh(path, texture=override).texture, override)
    Image.fromarray(np.full((2, 4), 255, np.uint8)).save(tmp_path / "white.png")
    np.testing.assert_allclose(load_mesh(path, texture=tmp_path / "white.png").texture, 1.0)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P"])
def test_file_textures_of_any_mode_become_rgb(mode, tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = write_seam_obj(tmp_path, rgb)
    image.save(tmp_path / "seam.png")
    expected = srgb_to_linear(np.asarray(image.convert("RGB")) / 255.0)
    np.testing.assert_allclose(load_mesh(path).texture, expected, atol=1e-6)


def test_validate_texture_channels_and_size():
    grey = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(validate_texture(grey), np.repeat(grey[..., None], 3, axis=2))
    rgba = np.random.default_rng(1).random((4, 4, 4))
    with pytest.warns(UserWarning, match="alpha channel ignored"):
        np.testing.assert_allclose(validate_texture(rgba), rgba[..., :3], atol=1e-7)
    validate_texture(np.ones((4, 8, 4)), power_of_two=True)  # opaque alpha: no warning
    with pytest.raises(UserError, match="not a power of two.*resize"):
        validate_texture(np.ones((6, 8, 3)), power_of_two=True)
    with pytest.raises(UserError, match=r"shape \(4, 4, 5\)"):
        validate_texture(np.ones((4, 4, 5)))
    with pytest.raises(UserError, match="dtype uint8.*load_image"):
        validate_texture(np.ones((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="NaN, inf or negative"):
        validate_texture(np.full((4, 4, 3), np.nan))


# ---------------------------------------------------------------------------- bad input

TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"
BAD_FILES = [
    ("garbage.glb", "not a glb file", "cannot read mesh file"),
    ("empty.obj", "", "contains no triangles"),
    ("points.obj", TRI, "contains no triangles"),
    ("nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "1 vertices with NaN or inf"),
    ("range.obj", TRI + "f 1 2 4\n", "cannot read mesh file"),
    (
        "range.ply",
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
        "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n",
        "vertex index 7 but only 3 vertices",
    ),
    ("flat.obj", TRI + "f 1 2 2\n", "no face with an area"),
    ("data.xyz", "0 0 0\n", "unsupported format '.xyz'; convert it"),
]


@pytest.mark.parametrize("name,text,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_raise_user_errors(name, text, message, tmp_path):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        load_mesh(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist; check the path"):
        load_mesh(tmp_path / "nope.obj")


def test_point_cloud_ply_has_no_triangles(tmp_path):
    trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(tmp_path / "pc.ply")
    with pytest.raises(UserError, match="contains no triangles"):
        load_mesh(tmp_path / "pc.ply")


def test_degenerate_and_duplicate_faces_kept_with_warning(tmp_path):
    text = TRI + "v 2 0 0\nf 1 2 3\nf 1 1 3\nf 1 2 4\nf 3 1 2\nf 2 3 1\n"  # 1 + 2 deg + 2 dup
    (tmp_path / "dirty.obj").write_text(text)
    with pytest.warns(
        UserWarning, match="4 of 5 faces are degenerate or duplicates; they are kept"
    ):
        m = load_mesh(tmp_path / "dirty.obj")
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 0, 2], [0, 1, 3], [2, 0, 1], [1, 2, 0]])
    np.testing.assert_array_equal(distinct_faces(m.vertices, m.faces), [0])
    assert m.num_vertices == 4  # indices are never renumbered


def test_texture_without_uvs(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.stl")
    with pytest.raises(UserError, match="has no UVs; a texture needs texture coordinates"):
        load_mesh(tmp_path / "box.stl", texture=np.ones((4, 4, 3)))
    s = icosphere(0)
    with pytest.raises(UserError, match="has no UVs"):
        Mesh.from_arrays(s.vertices, s.faces, texture=np.ones((4, 4, 3)))


@pytest.mark.parametrize(
    "vertices,faces,message",
    [
        (np.zeros((0, 3)), np.zeros((0, 3)), "is empty"),
        (np.eye(3), np.zeros((0, 3)), "is empty"),
        (np.eye(3)[:, :2], [[0, 1, 2]], r"vertices have shape \(3, 2\), expected \(N, 3\)"),
        (np.eye(3), [[0, 1]], r"faces have shape \(1, 2\)"),
        (np.eye(3), [[0, 1, 2.5]], "faces must be integers"),
        (np.eye(3), [[0, 1, 3]], r"vertex index 3 but only 3 vertices; .* in \[0, 3\)"),
        (np.eye(3), [[0, -1, 2]], "vertex index -1"),
        ([[0, 0, 0], [1, 0, 0], [0, np.inf, 0]], [[0, 1, 2]], "NaN or inf coordinates"),
        (np.eye(3), [[0, 0, 1]], "no face with an area"),
    ],
)
def test_from_arrays_bad_input(vertices, faces, message):
    with pytest.raises(UserError, match=message):
        Mesh.from_arrays(vertices, faces)


def test_from_arrays_repairs_normals_and_keeps_valid_mesh():
    s = icosphere(1)
    normals = s.normals * 3.0
    normals[0], normals[1] = np.nan, 0.0
    m = Mesh.from_arrays(s.vertices, s.faces, normals=normals)
    reference = area_weighted_normals(s.vertices, s.faces)
    np.testing.assert_allclose(m.normals[:2], reference[:2], atol=1e-12)
    np.testing.assert_allclose(m.normals[2:], s.normals[2:], atol=1e-12)
    same = validate_mesh(s)
    for a, b in [(same.vertices, s.vertices), (same.faces, s.faces), (same.normals, s.normals)]:
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="NaN or inf UVs"):
        Mesh.from_arrays(s.vertices, s.faces, uvs=np.full((s.num_vertices, 2), np.nan))


def test_parts_with_different_textures_or_missing_uvs_warn(tmp_path):
    quads = "".join(f"v {x} {y} 0\n" for x, y in [(0, 0), (1, 0), (1, 1), (0, 1)])
    uvs = "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
    text = f"mtllib two.mtl\n{quads}{uvs}usemtl a\nf 1/1 2/2 3/3\nusemtl b\nf 1/1 3/3 4/4\n"
    (tmp_path / "two.obj").write_text(text)
    (tmp_path / "two.mtl").write_text("newmtl a\nmap_Kd a.png\nnewmtl b\nmap_Kd b.png\n")
    for name, value in [("a", 0), ("b", 255)]:
        Image.fromarray(np.full((2, 2, 3), value, np.uint8)).save(tmp_path / f"{name}.png")
    with pytest.warns(UserWarning, match="2 different textures; using the first"):
        m = load_mesh(tmp_path / "two.obj")
    assert m.num_faces == 2 and m.texture.shape == (2, 2, 3)

    s = icosphere(0)
    with_uv = trimesh.Trimesh(s.vertices, s.faces, process=False)
    with_uv.visual = trimesh.visual.TextureVisuals(uv=np.zeros((s.num_vertices, 2)))
    scene = trimesh.Scene([with_uv, trimesh.Trimesh(s.vertices + 3, s.faces, process=False)])
    with pytest.warns(UserWarning, match="only some parts have UVs"):
        m = load_mesh(export(scene, tmp_path / "mixed.glb"))
    assert m.uvs is None and m.texture is None and m.num_faces == 2 * s.num_faces
