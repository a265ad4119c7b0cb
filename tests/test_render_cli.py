"""``taichi-dr render``: end to end in a fresh process (float32, the users' default) and
bad input as one-line errors."""

import subprocess
import sys

import numpy as np
import pytest

from taichi_dr.cli import main


def test_render_command_writes_image_and_aovs(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "taichi_dr",
        "render",
        "assets/textured.obj",
        "--resolution",
        "48",
        "32",
        "--shading",
        "ggx",
        "--light",
        "point:2,2,2:3,3,3",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    aov = np.load(out / "aov.npz")
    assert aov["image"].shape == (32, 48, 3) and aov["image"].dtype == np.float32
    assert aov["triangle_id"].dtype == np.int32 and aov["mask"].dtype == bool
    assert 0.1 < aov["mask"].mean() < 0.9
    np.testing.assert_array_equal(aov["mask"], aov["triangle_id"] >= 0)
    assert np.isinf(aov["depth"][~aov["mask"]]).all()
    assert np.isfinite(aov["depth"][aov["mask"]]).all()
    for name in ("normal", "uv", "barycentric"):
        assert name in aov
    assert (out / "image.png").stat().st_size > 100


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.obj"], "does not exist"),
        (["assets/sphere.obj", "--resolution", "0", "10"], "resolution"),
        (["assets/sphere.obj", "--fov", "180"], "fov"),
        (["assets/sphere.obj", "--near", "0"], "near"),
        (["assets/sphere.obj", "--near", "5", "--far", "2"], "near"),
        (["assets/sphere.obj", "--light", "spot:1,2"], "--light"),
    ],
)
def test_render_bad_input(args, words, tmp_path, capsys):
    assert main(["render", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err and len(err.strip().splitlines()) == 1


def test_unavailable_arch_is_one_line_error(tmp_path):
    # in a subprocess: a failed init resets Taichi, which would free this session's fields
    for arch, words in (("metal", "not available"), ("cuda", "not available")):
        cmd = [
            sys.executable,
            "-m",
            "taichi_dr",
            "render",
            "assets/sphere.obj",
            "--arch",
            arch,
            "--out",
            str(tmp_path),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and words in last and "available: cpu" in last
