"""The teaching demos (demos/fit_cube.py, demos/custom_pipeline.py) at small settings: each
runs through the public API, writes its picture and does what its docstring promises."""

import os
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "demos"))

import custom_pipeline  # noqa: E402
import fit_cube  # noqa: E402

ARCH = ["--arch", os.environ.get("TAICHI_DR_TEST_ARCH", "cpu")]


def test_fit_cube(tmp_path):
    r = fit_cube.main(["--iters", "120", "--size", "32", "--out", str(tmp_path), *ARCH])
    assert r["error"] < 0.6 * r["error_start"]
    assert (tmp_path / "fit.png").exists()


def test_custom_pipeline(tmp_path):
    assert custom_pipeline.main(["--size", "32", "--out", str(tmp_path), *ARCH]) == 0
    assert (tmp_path / "image.png").exists()
