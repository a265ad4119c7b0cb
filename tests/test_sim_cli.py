"""``taichi-dr smoke`` and the demos, in-process on tiny grids (f64 from conftest)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from taichi_dr import io
from taichi_dr.apps.smoke import taichi_logo
from taichi_dr.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _demo(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "demos" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


TINY = ["--grid", "16", "--steps", "4", "--headless", "--frame-every", "1"]


def test_smoke_init_velocity_demo(tmp_path):
    demo = _demo("smoke_init_velocity")

    out = tmp_path / "a"
    assert demo([*TINY, "--iters", "6", "--lr", "0.3", "--out", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["app"] == "smoke-init-velocity" and len(data["losses"]) == 6
    final = data["final"]
    assert final["mse"] < final["mse_start"]  # the optimisation makes progress
    assert final["reduction"] == pytest.approx(1 - final["mse"] / final["mse_start"])
    for name in (
        "loss.png",
        "progress.gif",
        "rollout_before.gif",
        "rollout_after.gif",
        "rollout_after.mp4",
        "target.png",
        "final.png",
        "checkpoint.npz",
    ):
        assert (out / name).stat().st_size > 0, name
    # resume from the checkpoint of the 6 iterations and run 2 more
    assert (
        main(
            [
                "smoke",
                "init-velocity",
                *TINY,
                "--iters",
                "8",
                "--lr",
                "0.3",
                "--out",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    data = json.loads((out / "metrics.json").read_text())
    assert [r["iteration"] for r in data["iterations"]] == list(range(8))
    # resuming the other application's checkpoint is refused
    assert main(["smoke", "control", *TINY, "--iters", "8", "--out", str(out), "--resume"]) == 2


def test_smoke_control_demo(tmp_path):
    demo = _demo("smoke_control")

    assert demo([*TINY, "--iters", "4", "--out", str(tmp_path)]) == 0
    final = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert final["mse"] < final["mse_start"]


def test_smoke_target_image_size(tmp_path, capsys):
    good = tmp_path / "t16.png"
    io.save_image(good, np.zeros((16, 16)), srgb=False)
    bad = tmp_path / "t20.png"
    io.save_image(bad, np.zeros((20, 16)), srgb=False)
    assert (
        main(["smoke", "init-velocity", *TINY, "--target", str(bad), "--out", str(tmp_path)]) == 2
    )
    assert "16x20 pixels but the grid is 16x16" in capsys.readouterr().err
    assert main(["smoke", "init-velocity", *TINY, "--target", str(tmp_path / "none.png")]) == 2
    assert main(["smoke", "init-velocity", "--grid", "3", "--headless"]) == 2
    assert main(["smoke", "init-velocity", *TINY, "--dt", "0", "--out", str(tmp_path)]) == 2
    assert "dt must be a positive" in capsys.readouterr().err


def test_taichi_logo_target():
    img = taichi_logo(32)
    assert img.shape == (32, 32) and 0 <= img.min() and img.max() <= 1
    assert img[16, 8] > 0.8 and img[16, 24] < 0.5  # bright left half, dim right half
    assert img[0, 0] < 0.05  # background


def test_smoke_volume_demo(tmp_path, capsys):
    """3D smoke → volume rendering → image loss, optimised end to end at tiny size."""
    demo = _demo("smoke_volume")
    tiny = ["--grid", "12", "--steps", "3", "--resolution", "16", "--views", "2", "--headless"]
    assert demo([*tiny, "--iters", "5", "--ray-steps", "16", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["app"] == "smoke-volume" and len(data["losses"]) == 5
    final = data["final"]
    assert final["mse"] < 0.7 * final["mse_start"]
    assert io.load_image(tmp_path / "target.png").shape == (16, 32, 3)  # two views side by side
    for name in ("loss.png", "progress.gif", "rollout_before.gif", "rollout_after.gif"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert demo([*tiny, "--views", "0", "--out", str(tmp_path)]) == 2
    assert "--views must lie in [1, 8]" in capsys.readouterr().err
    assert demo([*tiny, "--target", "x.png", "--out", str(tmp_path)]) == 2
    assert "--target is for the 2D tasks" in capsys.readouterr().err
