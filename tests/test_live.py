"""The live view of a fit: key handling, the loss plot and the dashboard layout without a
window; the windowed path of ``taichi-dr fit`` in a subprocess under Xvfb (+ xdotool)."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import skip

from taichi_dr.apps import live
from taichi_dr.apps.orbit import ViewState


def test_pause_step_and_views():
    s = live.LiveState(views=3, orbit=ViewState(center=np.zeros(3), radius=1.0))
    assert s.take_step() and s.take_step()  # running: every frame steps
    s.press(" ")
    assert s.paused and not s.take_step()
    s.press("s")
    s.press("n")
    assert s.take_step() and s.take_step() and not s.take_step()  # exactly two single steps
    s.press(" ")
    assert not s.paused and s.take_step()
    s.press("s")  # a single step while running pauses after it
    assert s.take_step() and not s.take_step()
    s.press(" ")  # resume drops steps still pending
    s.press("s")
    s.press(" ")
    s.press(" ")
    assert not s.take_step()
    for key, view in (("v", 1), ("Right", 2), ("v", 0), ("Left", 2), ("Left", 1)):
        s.press(key)
        assert s.view == view, key
    assert s.describe() == "paused, view 2 of 3"
    distance = s.orbit.distance
    s.press("Up")
    assert s.orbit.distance < distance
    s.pointer((0.5, 0.5), left=True, right=False)
    s.pointer((0.6, 0.5), left=True, right=False)  # a drag orbits
    assert s.orbit.azimuth == pytest.approx(30.0 - 18.0)
    s.press("r")
    assert (s.orbit.azimuth, s.orbit.distance) == (30.0, distance)
    s.press("x")  # ignored
    assert s.running
    s.press("Escape")
    assert not s.running


def _curve(img):
    return np.all(img == live.CURVE, axis=2)


def test_loss_plot_log_scale():
    w, h, m = 60, 30, 4
    losses = 10.0 ** -np.linspace(0, 2, 50)  # 1 → 0.01, straight on a log scale
    img = live.loss_plot(losses, w, h, margin=m)
    assert img.shape == (h, w, 3)
    curve = _curve(img)
    rows, cols = np.nonzero(curve)
    assert cols.min() == m and cols.max() == w - m - 1  # first to last iteration
    assert rows[cols == m].min() == m  # largest loss at the top
    assert rows[cols == w - m - 1].max() == h - m - 1  # smallest at the bottom
    mean_row = [rows[cols == c].mean() for c in range(m, w - m)]
    assert np.all(np.diff(mean_row) >= 0)  # falls monotonically
    expect = m + (np.arange(m, w - m) - m) / (w - 2 * m - 1) * (h - 2 * m - 1)
    assert np.abs(np.array(mean_row) - expect).max() <= 1.0  # a straight line
    # grid lines at 1, 0.1 and 0.01 (rows m, middle, bottom) where the curve is not
    grid = np.all(img == live.GRID, axis=2)
    assert set(np.nonzero(grid.any(axis=1))[0]) == {m, round((h - 1) / 2), h - m - 1}


def test_loss_plot_edge_cases():
    empty = live.loss_plot([], 20, 10)
    assert np.all(empty == live.BACKGROUND)
    flat = _curve(live.loss_plot([0.5, 0.5, 0.5], 20, 10, margin=2))
    assert flat.any(axis=1).sum() == 1 and flat.sum() == 16  # one horizontal line
    one = _curve(live.loss_plot([0.0], 20, 10, margin=2))  # zero: clipped, not an error
    assert one.sum() == 16


def test_compose_layout_and_upscale():
    h, w = 8, 10
    panels = [np.full((h, w, 3), k / 4) for k in range(3)]
    orbit = np.full((h, w, 3), 0.9)
    d = live.compose(panels, orbit, [1.0, 0.5])
    assert d.shape == (2 * h, 3 * w, 3)
    assert np.array_equal(d[:h, w : 2 * w], panels[1]) and np.array_equal(d[h:, :w], orbit)
    assert np.array_equal(d[h:, w:], live.loss_plot([1.0, 0.5], 2 * w, h))
    plain = live.compose(panels, None, [1.0])
    assert np.array_equal(plain[h:], live.loss_plot([1.0], 3 * w, h))
    big = live.upscale(d, width=90)
    assert big.shape == (6 * h, 9 * w, 3) and np.array_equal(big[::3, ::3], d)
    assert live.upscale(d, width=20) is d


def test_fit_window_under_xvfb(ggui, xvfb, tmp_path):
    """``taichi-dr fit material`` with a window: it opens, space pauses (no progress), s
    runs exactly one iteration, v switches the view, q stops and the outputs are written."""
    if shutil.which("xdotool") is None:
        skip("xdotool is not installed (apt-get install xdotool)")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "taichi_dr", "fit", "material", "--resolution", "32",
           "--views", "2", "--iters", "100000", "--checkpoint-every", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=xvfb, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def key(name):
        subprocess.run(["xdotool", "windowfocus", "--sync", window, "key", name], env=xvfb)

    def done():  # iterations finished so far (the checkpoint is written after each)
        with np.load(out / "checkpoint.npz") as data:
            return int(data["iteration"])

    try:
        found = subprocess.run(
            ["xdotool", "search", "--sync", "--name", "fit-material"],
            env=xvfb, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        window = found.stdout.split()[0]
        deadline = time.time() + 180  # the first iteration compiles the kernels
        while not (out / "checkpoint.npz").exists() and time.time() < deadline:
            time.sleep(0.5)
        key("space")
        time.sleep(1.5)
        paused_at = done()
        time.sleep(1.0)
        assert done() == paused_at  # paused: no progress
        key("s")
        time.sleep(1.5)
        assert done() == paused_at + 1  # one single step
        key("v")
        key("q")
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "paused, view 1 of 2" in output and "paused, view 2 of 2" in output
    assert f"stopped at iteration {paused_at + 1}" in output
    data = json.loads((out / "metrics.json").read_text())
    assert len(data["losses"]) == paused_at + 1
    for name in ("dashboard.png", "loss.png", "progress.gif", "params.json"):
        assert (out / name).stat().st_size > 0, name
