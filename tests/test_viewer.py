"""The viewer: pure input/camera state, the canvas picture against an independent render,
headless GGUI in-process (needs a Vulkan driver: lavapipe), the windowed path in a
subprocess under Xvfb (+ xdotool for key presses). GUI tests skip with a printed reason."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from taichi_dr import Renderer, UserError, cli, icosphere, io, torus
from taichi_dr.apps.orbit import AOVS, SHADING_KEYS, ViewState
from taichi_dr.apps.viewer import Viewer, open_window, run_headless

ROOT = Path(__file__).resolve().parents[1]
W, H = 48, 32  # not square: a transposed picture cannot pass


def _skip(reason):
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def state(**kw):
    return ViewState(center=(0.5, -0.2, 0.1), radius=2.0, **kw)


# --------------------------------------------------------------------------- ViewState


def test_camera_orbits_center_at_distance():
    s = state(azimuth=0.0, elevation=0.0, distance=5.0)
    assert np.allclose(s.eye(), s.center + [0, 0, 5])
    s = state(azimuth=90.0, elevation=30.0, distance=4.0)
    d = s.eye() - s.center
    assert np.isclose(np.linalg.norm(d), 4.0)
    assert np.isclose(d[1], 4.0 * math.sin(math.radians(30)))
    assert d[0] > 0 and np.isclose(d[2], 0, atol=1e-12)
    cam = s.camera(W, H)
    c = cam.view @ [*s.center, 1.0]
    assert np.allclose(c[:3], [0, 0, -4.0])  # centre straight ahead
    assert (cam.width, cam.height) == (W, H)


def test_framing_and_depth_range_contain_the_mesh():
    mesh = torus()
    s = ViewState.framing(mesh)
    assert np.isclose(s.radius, np.linalg.norm(mesh.vertices - s.center, axis=1).max())
    for az, el in [(0, 0), (123, -60), (250, 89)]:
        s.azimuth, s.elevation = az, el
        for factor in (1.0, 0.01, 100.0):
            s.zoom(factor)
            near, far = s.depth_range()
            z = -(s.camera(W, H).view @ np.c_[mesh.vertices, np.ones(len(mesh.vertices))].T)[2]
            assert near <= z.min() or near == pytest.approx(1e-3 * s.distance)
            assert z.max() <= far and 0 < near < far


@pytest.mark.parametrize("width, height", [(40, 100), (100, 40)])
def test_default_view_frames_the_mesh(width, height):
    mesh = torus()
    for az, el in [(0, 0), (70, 50), (200, -80)]:
        s = ViewState.framing(mesh, aspect=width / height, azimuth=az, elevation=el)
        clip = s.camera(width, height).mvp @ np.c_[mesh.vertices, np.ones(mesh.num_vertices)].T
        ndc = clip[:3] / clip[3]
        assert np.abs(ndc).max() < 1 and np.abs(ndc[:2]).max() > 0.4  # inside, not tiny


def test_bad_state_is_a_user_error():
    with pytest.raises(UserError, match="shading"):
        state(shading="toon")
    with pytest.raises(UserError, match="AOV"):
        state(aov="albedo")
    with pytest.raises(UserError, match="radius"):
        ViewState(center=(0, 0, 0), radius=0.0)
    empty = icosphere(0)
    empty.vertices = np.zeros((0, 3))
    with pytest.raises(UserError, match="no vertices"):
        ViewState.framing(empty)


def test_left_drag_orbits_right_drag_zooms():
    s = state(azimuth=10.0, elevation=0.0, distance=6.0)
    s.pointer((0.5, 0.5), left=True, right=False)  # press: no motion yet
    assert (s.azimuth, s.elevation) == (10.0, 0.0)
    s.pointer((0.6, 0.55), left=True, right=False)
    assert s.azimuth == pytest.approx((10.0 - 18.0) % 360)
    assert s.elevation == pytest.approx(-9.0)
    s.pointer((0.6, 0.55), left=False, right=False)  # release
    s.pointer((0.0, 0.0), left=True, right=False)  # a new press does not jump
    assert s.azimuth == pytest.approx(352.0)
    s.pointer((0.0, -10.0), left=True, right=False)
    assert s.elevation == 89.0  # clamped short of the pole
    s.pointer((0.0, 0.0), left=False, right=False)
    s.pointer((0.2, 0.2), left=False, right=True)
    s.pointer((0.2, 0.7), left=False, right=True)  # drag up half a window: closer by e^0.5
    assert s.distance == pytest.approx(6.0 * math.exp(-0.5))


def test_keys():
    s = state(distance=6.0)
    for key, model in SHADING_KEYS.items():
        s.press(key)
        assert s.shading == model
    seen = []
    for _ in AOVS:
        seen.append(s.aov)
        s.press("a")
    assert tuple(seen) == AOVS and s.aov == "image"  # cycles and wraps
    s.press("Up")
    assert s.distance < 6.0
    s.press("Down")
    s.press("Down")
    assert s.distance > 6.0
    for _ in range(100):
        s.press("Down")
    assert s.distance == pytest.approx(50.0 * s.radius)  # zoom is clamped
    s.press("Left")
    assert s.azimuth == pytest.approx(30.0 + 15.0)
    s.press("r")
    assert (s.azimuth, s.elevation, s.distance) == (30.0, 20.0, 6.0)
    s.press("x")  # ignored
    s.press("Shift")
    assert not s.take_screenshot()
    s.press("s")
    assert s.take_screenshot() and not s.take_screenshot()  # once per press
    assert s.running
    s.press("Escape")
    assert not s.running
    s2 = state()
    s2.press("q")
    assert not s2.running


# --------------------------------------------------------------------------- picture


@pytest.fixture(scope="module")
def viewer():
    mesh = icosphere(2)
    return Viewer(mesh, ViewState.framing(mesh, azimuth=40.0, elevation=25.0), W, H)


@pytest.fixture(scope="module")
def reference(viewer):
    """The image and AOVs of the viewer's state from a separate renderer (built once)."""
    s = viewer.state
    r = Renderer(viewer.mesh, s.camera(W, H))

    def result():
        r.configure(shading=viewer.state.shading)
        r.set_camera(viewer.state.camera(W, H))
        r.lights.reset(**viewer.state.lights())
        return r.render()

    return result


def test_picture_is_the_renderers_image_srgb_encoded(viewer, reference):
    viewer.state.shading, viewer.state.aov = "ggx", "image"
    assert viewer.draw()
    assert not viewer.draw()  # nothing changed: no render
    ref = reference()
    pic = viewer.picture()
    assert pic.shape == (H, W, 3)
    assert ref.mask.mean() > 0.2
    assert np.abs(pic * 255 - io.to_uint8(ref.image)).max() < 0.51 + 1e-3


def test_aovs_in_false_colour(viewer, reference):
    viewer.state.aov = "mask"
    viewer.draw()
    ref = reference()
    assert np.array_equal(viewer.picture(), np.repeat(ref.mask[..., None], 3, 2).astype(float))
    viewer.state.aov = "normal"
    viewer.draw()
    n = ref.normal[ref.mask]
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    assert np.allclose(viewer.picture()[ref.mask], n * 0.5 + 0.5, atol=1e-5)
    viewer.state.aov = "depth"
    viewer.draw()
    pic = viewer.picture()
    assert np.all(pic[~ref.mask] == 0) and np.all(pic[ref.mask].max(1) > 0.2)
    # turbo: near is red-ish, far is blue-ish
    nearest = np.unravel_index(np.argmin(np.where(ref.mask, ref.depth, np.inf)), ref.mask.shape)
    assert pic[nearest][0] > pic[nearest][2]
    viewer.state.aov = "triangle_id"
    viewer.draw()
    pic = viewer.picture()
    ids = ref.triangle_id
    a, b = np.nonzero(ref.mask)
    same = ids[a[:, None], b[:, None]] == ids[a[None], b[None]]
    colours = pic[a, b]
    assert np.array_equal(same, np.all(colours[:, None] == colours[None], axis=2))
    viewer.state.aov = "image"


# --------------------------------------------------------------------------- GGUI


def test_headless_png_matches_the_renderer(viewer, reference, ggui, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # imgui.ini
    viewer.state.shading, viewer.state.azimuth = "blinn-phong", 10.0
    path = run_headless(viewer, frames=3, out=tmp_path, spin=25.0)
    assert viewer.state.azimuth == pytest.approx(60.0)
    png = iio.imread(path)[..., :3].astype(int)
    ref = io.to_uint8(reference().image).astype(int)
    assert png.shape == ref.shape == (H, W, 3)
    assert np.abs(png - ref).max() <= 1


def test_window_without_display_is_a_user_error(monkeypatch):
    if not sys.platform.startswith("linux"):
        _skip("the DISPLAY check is for Linux (X11) only")
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(UserError, match="--headless"):
        open_window(8, 8, show=True)


def test_cli_errors(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path / "missing.obj"), "--headless"]) == 2
    assert cli.main(["view", "x.obj", "--frames", "0"]) == 2
    assert cli.main(["view", "x.obj", "--resolution", "0", "10"]) == 2
    assert capsys.readouterr().err.count("error:") == 3


def view_cmd(out, *extra):
    return [sys.executable, "-m", "taichi_dr", "view", str(ROOT / "assets" / "sphere.obj")] + [
        "--resolution", str(W), str(H), "--out", str(out), *extra
    ]  # fmt: skip


def test_window_under_xvfb(ggui, xvfb, tmp_path):
    run = subprocess.run(
        view_cmd(tmp_path, "--frames", "3"),
        env=xvfb,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    png = iio.imread(tmp_path / "view.png")
    assert png.shape[:2] == (H, W) and png[..., :3].max() > 100  # a lit sphere
    if shutil.which("xdotool") is None:
        _skip("xdotool is not installed: key presses untested (apt-get install xdotool)")
    proc = subprocess.Popen(
        view_cmd(tmp_path, "--frames", "100000"),
        env=xvfb,
        cwd=tmp_path,  # GGUI writes imgui.ini into the working directory
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        found = subprocess.run(
            ["xdotool", "search", "--sync", "--name", "taichi-dr view"],
            env=xvfb,
            capture_output=True,
            text=True,
            timeout=90,
        )
        window = found.stdout.split()[0]
        for key in ("g", "a", "s", "q"):  # ggx, depth AOV, screenshot, quit
            subprocess.run(["xdotool", "windowfocus", "--sync", window, "key", key], env=xvfb)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "shading: ggx, aov: depth" in out
    shot = iio.imread(tmp_path / "screenshot_0000.png")[..., :3].astype(int)
    assert shot.shape[:2] == (H, W)
    blue_or_red = np.abs(shot[..., 0] - shot[..., 2]) > 60  # turbo colours, not grey shading
    assert blue_or_red.mean() > 0.1
