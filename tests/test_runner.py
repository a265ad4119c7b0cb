"""The shared optimisation runner: records, outputs, checkpoints/resume, NaN stop, headless."""

import json

import numpy as np
import pytest

from taichi_dr.apps.runner import Runner
from taichi_dr.errors import UserError


class _Quadratic:
    """Gradient descent on f(x) = |x - 3|² (an application stand-in with checkpointable state)."""

    def __init__(self):
        self.x = np.zeros(4)

    def step(self, it):
        loss = float(np.sum((self.x - 3.0) ** 2))
        self.x -= 0.25 * 2 * (self.x - 3.0)
        return {"loss": loss, "err": float(np.abs(self.x - 3).max())}

    def get(self):
        return {"x": self.x.copy()}

    def set(self, arrays):
        self.x = arrays["x"].copy()

    def panels(self):
        img = np.full((4, 5, 3), self.x[0] / 3.0)
        return [img, 1 - img]


def _runner(tmp_path, **kw):
    kw.setdefault("checkpoint_every", 2)
    return Runner(tmp_path, "quadratic", {"lr": 0.25}, headless=True, key_metric="err", **kw)


def test_runner_writes_outputs(tmp_path, capsys):
    app = _Quadratic()
    r = _runner(tmp_path)
    records = r.run(app.step, 6, state=app, panels=app.panels)
    metrics = r.finish({"err": records[-1]["err"]})
    assert "running headless" in capsys.readouterr().out
    losses = [36.0 * 0.25**i for i in range(6)]  # each step halves |x - 3|
    np.testing.assert_allclose([rec["loss"] for rec in records], losses)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["settings"] == {"lr": 0.25} and data["app"] == "quadratic"
    np.testing.assert_allclose(data["losses"], losses)
    assert data["final"] == metrics["final"] and data["wall_time_s"] >= 0
    for name in ("loss.png", "progress.gif", "checkpoint.npz"):
        assert (tmp_path / name).stat().st_size > 0
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "progress.gif").shape == (6, 4, 10, 3)


def test_runner_resume_continues(tmp_path):
    app = _Quadratic()
    _runner(tmp_path).run(app.step, 4, state=app)  # checkpoints after iterations 2 and 4
    resumed = _Quadratic()
    r = _runner(tmp_path, resume=True)
    records = r.run(resumed.step, 6, state=resumed)
    assert [rec["iteration"] for rec in records] == list(range(6))
    straight = _Quadratic()
    expect = [straight.step(i)["loss"] for i in range(6)]
    np.testing.assert_allclose([rec["loss"] for rec in records], expect)
    np.testing.assert_allclose(resumed.x, straight.x)


def test_runner_resume_errors(tmp_path):
    app = _Quadratic()
    with pytest.raises(UserError, match="no checkpoint"):
        _runner(tmp_path, resume=True).run(app.step, 2, state=app)
    _runner(tmp_path).run(app.step, 2, state=app)
    other = Runner(tmp_path, "other-app", {}, headless=True, resume=True)
    with pytest.raises(UserError, match="belongs to 'quadratic'"):
        other.run(app.step, 4, state=app)


def test_runner_done_ends_early_with_a_checkpoint(tmp_path):
    app = _Quadratic()

    def step(it):
        return {**app.step(it), "done": it == 2}

    r = _runner(tmp_path, checkpoint_every=10)
    records = r.run(step, 10, state=app, panels=app.panels)
    assert [rec["iteration"] for rec in records] == [0, 1, 2] and "done" not in records[-1]
    with np.load(r.checkpoint_path) as data:
        assert int(data["iteration"]) == 3
    assert len(r.frames) == 3  # the last iteration's frame is kept


def test_runner_stops_on_nan(tmp_path):
    def step(it):
        return {"loss": 1.0 if it < 3 else float("nan")}

    with pytest.raises(UserError, match="became nan at iteration 3"):
        _runner(tmp_path).run(step, 10)


def test_runner_without_display_runs_headless(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    Runner(tmp_path, "quadratic", {}, headless=False)
    assert "no display" in capsys.readouterr().out


class _Dashboard:
    """A dashboard stand-in: two views of the quadratic's panels, no orbit panel."""

    views, orbit = 2, None

    def __init__(self, app):
        self.app = app

    def panels(self, view=0):
        return [np.roll(p, view, axis=1) for p in self.app.panels()]


def test_runner_writes_the_dashboard_headless(tmp_path):
    from taichi_dr import io
    from taichi_dr.apps import live

    app = _Quadratic()
    r = _runner(tmp_path)
    board = _Dashboard(app)
    records = r.run(app.step, 3, state=app, panels=app.panels, dashboard=board)
    r.finish({})
    expect = live.compose(app.panels(), None, [rec["loss"] for rec in records])
    import imageio.v3 as iio

    png = iio.imread(tmp_path / "dashboard.png")[..., :3]
    assert png.shape == (8, 10, 3)
    assert np.array_equal(png, io.to_uint8(expect))
