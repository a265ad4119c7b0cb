"""The nvdiffrast-style demos (demos/nvdiffrast/) at tiny settings: each runs, writes its
pictures and improves on its start (their full-size accuracy is stated in each docstring
and in the README)."""

import sys

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed; pip install 'taichi-dr[torch]'")

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "demos" / "nvdiffrast"))

import cube  # noqa: E402
import earth  # noqa: E402
import envphong  # noqa: E402
import pose  # noqa: E402
import triangle  # noqa: E402


def run(module, tmp_path, *argv):
    return module.main([*argv, "--out", str(tmp_path), "--quiet"])


def test_triangle(tmp_path):
    r = run(triangle, tmp_path, "--resolution", "64")
    assert r["max_error"] < 1e-5 and (tmp_path / "triangle.png").exists()


def test_cube(tmp_path):
    r = run(cube, tmp_path, "--iters", "40", "--resolution", "12")
    assert r["pos_rms"] < 0.9 * r["pos_rms_start"] and r["col_rms"] < 0.9 * r["col_rms_start"]
    assert (tmp_path / "cube_fit.png").exists()


def test_pose(tmp_path):
    r = run(pose, tmp_path, "--iters", "30", "--resolution", "24", "--start-angle", "15")
    assert r["angle"] < 0.5 * r["angle_start"]


def test_earth(tmp_path):
    r = run(earth, tmp_path, "--iters", "15", "--resolution", "32", "--texture", "32", "16")
    assert r["psnr"] > r["psnr_start"] + 3 and (tmp_path / "earth_render.png").exists()


def test_envphong(tmp_path):
    r = run(envphong, tmp_path, "--iters", "15", "--resolution", "32", "--env", "8")
    assert r["psnr"] > r["psnr_start"] + 3 and (tmp_path / "envphong_cubemap.png").exists()
