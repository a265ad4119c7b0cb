"""Splat files and commands: the 3DGS .ply layout (round trip, a hand-written ASCII file,
malformed files), point clouds through trimesh, the camera conversion from the mesh
renderer, and ``taichi-dr render`` / ``view`` on .ply scenes."""

import subprocess
import sys

import numpy as np
import pytest
import trimesh

from taichi_dr import UserError, cli
from taichi_dr.camera import Camera
from taichi_dr.commands.splat import load, render_gaussians
from taichi_dr.splat import camera as cameras
from taichi_dr.splat import ply


def _gaussians(rng, n=30, K=4):
    return ply.Gaussians(
        means=rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32),
        quats=rng.standard_normal((n, 4)).astype(np.float32),
        scales=np.exp(rng.uniform(-3.5, -2.5, (n, 3))).astype(np.float32),
        opacities=rng.uniform(0.3, 0.99, n).astype(np.float32),
        sh=(rng.standard_normal((n, K, 3)) * 0.5).astype(np.float32),
    )


def test_ply_round_trip(tmp_path, rng):
    g = _gaussians(rng, K=9)
    ply.write_gaussians(tmp_path / "scene.ply", g)
    assert ply.is_gaussian_ply(tmp_path / "scene.ply")
    back = ply.read_gaussians(tmp_path / "scene.ply")
    assert back.sh_degree == 2
    for key in ("means", "quats", "sh"):
        np.testing.assert_array_equal(getattr(back, key), getattr(g, key))
    np.testing.assert_allclose(back.scales, g.scales, rtol=1e-6)
    np.testing.assert_allclose(back.opacities, g.opacities, rtol=1e-6)


ASCII = """ply
format ascii 1.0
comment hand-written 3DGS file, SH degree 1, an unused extra property
element vertex 2
property float x
property float y
property float z
property double f_dc_0
property float f_dc_1
property float f_dc_2
{rest}property float opacity
property float scale_0
property float scale_1
property float scale_2
property float rot_0
property float rot_1
property float rot_2
property float rot_3
property uchar extra
end_header
1 2 3 0.1 0.2 0.3 {r0} 0 -1 -2 -3 2 0 0 0 7
4 5 6 0 0 0 {r1} 1.5 0 0 0 1 0 0 0 9
"""


def test_ascii_ply_with_channel_major_sh(tmp_path):
    rest = "".join(f"property float f_rest_{i}\n" for i in range(9))
    r0 = " ".join(str(v) for v in range(10, 19))  # R: 10 11 12, G: 13 14 15, B: 16 17 18
    text = ASCII.format(rest=rest, r0=r0, r1=" ".join(["0"] * 9))
    (tmp_path / "a.ply").write_text(text)
    g = ply.read_gaussians(tmp_path / "a.ply")
    np.testing.assert_allclose(g.means, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(g.sh[0, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(g.sh[0, 1:], [[10, 13, 16], [11, 14, 17], [12, 15, 18]])
    np.testing.assert_allclose(g.opacities, [0.5, 1 / (1 + np.exp(-1.5))], rtol=1e-6)
    np.testing.assert_allclose(g.scales[0], np.exp([-1, -2, -3]), rtol=1e-6)
    np.testing.assert_allclose(g.quats[0], [2, 0, 0, 0])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.replace("property float opacity\n", ""), "lacks the 3DGS vertex properties"),
        (lambda t: t.replace("element vertex 2", "element vertex 3"), "expected 3 vertices"),
        (lambda t: t.replace("f_rest_8", "f_rest_9"), "f_rest"),
        (lambda t: t.replace("ply\n", "plx\n", 1), "not a PLY"),
        (lambda t: t.replace("format ascii", "format zip"), "unknown PLY format"),
    ],
)
def test_malformed_ply(tmp_path, edit, match):
    rest = "".join(f"property float f_rest_{i}\n" for i in range(9))
    text = ASCII.format(rest=rest, r0=" ".join(["1"] * 9), r1=" ".join(["0"] * 9))
    (tmp_path / "bad.ply").write_text(edit(text))
    with pytest.raises(UserError, match=match):
        ply.read_gaussians(tmp_path / "bad.ply")


def test_truncated_binary_ply(tmp_path, rng):
    ply.write_gaussians(tmp_path / "s.ply", _gaussians(rng))
    data = (tmp_path / "s.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[:-10])
    with pytest.raises(UserError, match="truncated"):
        ply.read_gaussians(tmp_path / "t.ply")
    with pytest.raises(UserError, match="does not exist"):
        ply.read_gaussians(tmp_path / "missing.ply")


def test_opencv_camera_projects_like_the_mesh_camera(rng):
    cam = Camera.look_at((1.0, 0.7, 2.5), (0.1, 0.0, -0.2), (0, 1, 0), 40.0, 37, 23, 0.1, 20)
    viewmat, K = cameras.opencv(cam)
    pts = rng.uniform(-0.5, 0.5, (20, 3))
    clip = np.c_[pts, np.ones(20)] @ cam.mvp.T
    ndc = clip[:, :2] / clip[:, 3:]
    expected = np.c_[(ndc[:, 0] + 1) / 2 * 37, (1 - ndc[:, 1]) / 2 * 23]  # row 0 at the top
    p = pts @ viewmat[:3, :3].T + viewmat[:3, 3]
    np.testing.assert_allclose((p @ K.T)[:, :2] / p[:, 2:], expected, atol=1e-9)
    np.testing.assert_allclose(p[:, 2], -(np.c_[pts, np.ones(20)] @ cam.view.T)[:, 2])


def test_render_command_on_a_3dgs_ply(tmp_path, rng):
    g = _gaussians(rng)
    ply.write_gaussians(tmp_path / "scene.ply", g)
    out = tmp_path / "out"
    argv = ["render", str(tmp_path / "scene.ply"), "--out", str(out), "--resolution", "24", "16"]
    assert cli.main(argv) == 0
    with np.load(out / "aov.npz") as aov:
        image, alpha, depth = aov["image"], aov["alpha"], aov["depth"]
    assert image.shape == (16, 24, 3) and alpha.max() > 0.5
    assert np.all(np.isinf(depth[alpha == 0])) and np.all(np.isfinite(depth[alpha > 0]))
    assert (out / "image.png").is_file()


def test_point_cloud_ply_renders_as_splats(tmp_path, rng):
    pts = rng.uniform(-0.5, 0.5, (200, 3))
    colours = np.tile([255, 0, 0, 255], (200, 1)).astype(np.uint8)
    trimesh.PointCloud(pts, colors=colours).export(tmp_path / "cloud.ply")
    g = load(tmp_path / "cloud.ply")
    np.testing.assert_allclose(g.colors(), np.tile([1.0, 0.0, 0.0], (200, 1)), atol=1e-6)
    cam = Camera.look_at((0, 0, 2.5), fov=40, width=20, height=20)
    image, alpha, _ = render_gaussians(g, cam)
    assert alpha[10, 10] > 0.9 and image[10, 10, 0] > 0.8 and image[10, 10, 1] < 0.05
    out = tmp_path / "out"
    argv = ["render", str(tmp_path / "cloud.ply"), "--out", str(out), "--resolution", "16", "16"]
    assert cli.main(argv) == 0


def test_view_command_headless_on_a_3dgs_ply(tmp_path, rng, ggui):
    ply.write_gaussians(tmp_path / "scene.ply", _gaussians(rng))
    out = tmp_path / "view"
    argv = ["view", str(tmp_path / "scene.ply"), "--headless", "--out", str(out)]
    argv += ["--resolution", "32", "24", "--frames", "2", "--spin", "30"]
    assert cli.main(argv) == 0
    assert (out / "view.png").is_file()


def test_vulkan_renders_what_the_cpu_renders(tmp_path, rng):
    """Forward rendering from the same kernels on vulkan (lavapipe here): a subprocess,
    since Taichi runs one arch per process; skips with the reason without a driver."""
    g = _gaussians(rng, K=4)
    ply.write_gaussians(tmp_path / "scene.ply", g)
    out = tmp_path / "vk"
    cmd = [sys.executable, "-m", "taichi_dr", "render", str(tmp_path / "scene.ply"), "--arch",
           "vulkan", "--resolution", "40", "28", "--out", str(out)]  # fmt: skip
    vk = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if vk.returncode == 2 and "not available" in vk.stderr:
        pytest.skip("no Vulkan driver: " + vk.stderr.strip().splitlines()[-1])
    assert vk.returncode == 0, vk.stderr[-2000:]
    assert "on vulkan" in vk.stdout  # Taichi would silently fall back to cpu
    assert cli.main(["render", str(tmp_path / "scene.ply"), "--resolution", "40", "28",
                     "--out", str(tmp_path / "cpu")]) == 0  # fmt: skip
    a, b = np.load(tmp_path / "cpu" / "aov.npz"), np.load(out / "aov.npz")
    assert a["alpha"].max() > 0.5
    np.testing.assert_allclose(b["image"], a["image"], atol=5e-3)  # float32 vs float64
    assert (np.abs(b["image"] - a["image"]) <= 1e-4).mean() > 0.999


def test_bad_scene_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
        "property float z\nend_header\n"
    )
    assert cli.main(["render", str(tmp_path / "empty.ply"), "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
