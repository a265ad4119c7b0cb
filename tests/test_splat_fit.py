"""``taichi-dr fit splats``: MCMC's relocation and noise, and a tiny run of the application
through its demo wrapper (outputs, held-out PSNR, the fitted .ply, --resume)."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from taichi_dr.apps import splat_fit as fit
from taichi_dr.splat import ply

ROOT = Path(__file__).resolve().parents[1]


def test_relocation_keeps_the_composited_opacity():
    o = np.array([0.3, 0.9, 0.5, 0.999])
    count = np.array([1.0, 2.0, 4.0, 3.0])
    new_o, new_s = fit.relocation(o, np.ones((4, 3)), count)
    np.testing.assert_allclose(1 - (1 - new_o) ** count, o)  # n copies at one spot: same α
    np.testing.assert_allclose(new_s[0], 1.0)  # a single copy keeps its scale
    assert np.all(new_s[1:] < 1.0) and np.all(new_s > 0)


def _values(rng, n=50):
    o = rng.uniform(0.05, 0.9, n)
    o[:10] = 0.001  # dead
    return {
        "means": rng.standard_normal((n, 3)),
        "quats": rng.standard_normal((n, 4)),
        "log_scales": np.log(rng.uniform(0.01, 0.1, (n, 3))),
        "logits": np.log(o / (1 - o)),
        "sh": rng.standard_normal((n, 4, 3)),
    }


def test_relocate_moves_the_dead_onto_the_living(rng):
    v = _values(rng)
    before = {k: a.copy() for k, a in v.items()}
    moved = fit.relocate(v, rng)
    dead = np.arange(10)
    assert set(dead) <= set(moved)
    o = 1 / (1 + np.exp(-v["logits"]))
    assert np.all(o > fit.MIN_OPACITY)
    for g in dead:  # each dead one now sits exactly on a living one, with its colour
        src = np.flatnonzero(np.all(before["means"][10:] == v["means"][g], axis=1))
        assert len(src) == 1
        np.testing.assert_array_equal(v["sh"][g], before["sh"][10 + src[0]])
    untouched = np.setdiff1d(np.arange(50), moved)
    for k in v:
        np.testing.assert_array_equal(v[k][untouched], before[k][untouched])
    assert fit.relocate(v, rng) is None  # nothing dead any more


def test_position_noise_moves_transparent_gaussians_only(rng):
    v = _values(rng)
    noise = fit.position_noise(v, 1e-4, rng)
    opaque = 1 / (1 + np.exp(-v["logits"])) > 0.2
    assert np.abs(noise[~opaque]).max() > 100 * np.abs(noise[opaque]).max()


def test_fit_splats_tiny_run_and_resume(tmp_path):
    spec = importlib.util.spec_from_file_location("fit_splats", ROOT / "demos/fit_splats.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "run"
    argv = ["--headless", "--resolution", "16", "--views", "3", "--gaussians", "150",
            "--checkpoint-every", "1", "--frame-every", "2", "--out", str(out)]  # fmt: skip
    assert demo.main([*argv, "--iters", "16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["app"] == "fit-splats" and len(metrics["losses"]) == 16
    final = metrics["final"]
    assert np.isfinite(final["psnr_test"]) and len(final["psnr_test_views"]) == fit.TEST_VIEWS
    assert min(metrics["losses"][-4:]) < metrics["losses"][0]
    g = ply.read_gaussians(out / "splats.ply")
    assert len(g) == 150 and g.sh_degree == 1
    for name in ("loss.png", "progress.gif", "dashboard.png", "target.png", "final.png"):
        assert (out / name).is_file(), name
    assert demo.main([*argv, "--iters", "18", "--resume"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["losses"]) == 18
