"""The vulkan backend (Mesa's lavapipe on machines without a GPU) renders the same
picture as cpu: same triangle ids, image within float32 rounding. Skips with the reason
when no Vulkan driver is installed."""

import subprocess
import sys

import numpy as np
import pytest


def _render(arch, out):
    cmd = [
        sys.executable,
        "-m",
        "taichi_dr",
        "render",
        "assets/blob.obj",
        "--arch",
        arch,
        "--resolution",
        "64",
        "48",
        "--shading",
        "ggx",
        "--out",
        str(out),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_vulkan_matches_cpu(tmp_path):
    vk = _render("vulkan", tmp_path / "vulkan")
    if vk.returncode == 2 and "not available" in vk.stderr:
        pytest.skip("no Vulkan driver: " + vk.stderr.strip().splitlines()[-1])
    assert vk.returncode == 0, vk.stderr[-2000:]
    assert "on vulkan" in vk.stdout  # really vulkan: Taichi would silently fall back to cpu
    cpu = _render("cpu", tmp_path / "cpu")
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    a, b = np.load(tmp_path / "cpu" / "aov.npz"), np.load(tmp_path / "vulkan" / "aov.npz")
    np.testing.assert_array_equal(a["triangle_id"], b["triangle_id"])
    np.testing.assert_allclose(a["image"], b["image"], atol=1e-4)
    assert a["mask"].mean() > 0.05  # the blob is in view
