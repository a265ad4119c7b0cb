"""Bad input keeps every promise (issue 17): a one-line error naming the problem and the fix
(exit status 2, no traceback), or a documented, correct result — never a crash, a silent
NaN, lost work or litter. Each table row is one case; ``test_case_count`` prints how many
there are, so the number can only grow.

Command-line cases run in this process (``main`` returns the exit status), at tiny sizes
that share the kernels other tests compile."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taichi_dr import io
from taichi_dr.cli import main
from taichi_dr.errors import UserError
from taichi_dr.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
SPHERE = str(ROOT / "assets" / "sphere.obj")
R16 = ["--resolution", "16", "16"]


def _one_error_line(capsys, argv) -> str:
    """Run ``taichi-dr argv``; assert exit 2, exactly one ``error:`` line and no traceback
    on stderr; return that line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert status == 2 and len(lines) == 1, (status, err)
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files on disk: {name: path}."""
    d = tmp_path_factory.mktemp("bad")
    out = {"dir": d}
    (d / "passwd").write_text("a file, not a folder\n")
    out["file"] = d / "passwd"
    return out


# ------------------------------------------------------------------ command-line errors
# (id, argv without --out (a fresh folder is added unless the case names one), words)
CLI = [
    ("out-is-a-file", ["render", SPHERE, *R16, "--out", "{file}"], ["is a file", "--out"]),
    ("out-under-a-file", ["render", SPHERE, *R16, "--out", "{file}/sub"], ["output folder"]),
    ("out-not-writable", ["render", SPHERE, *R16, "--out", "/proc/self"], ["cannot write"]),
    ("fit-out-is-a-file", ["fit", "pose", "--out", "{file}"], ["is a file"]),
    ("smoke-out-is-a-file", ["smoke", "control", "--out", "{file}"], ["is a file"]),
    ("ad-out-is-a-file", ["ad", "--out", "{file}"], ["is a file"]),
    ("view-out-is-a-file", ["view", SPHERE, "--headless", "--out", "{file}"], ["is a file"]),
    ("smoke-iters-0", ["smoke", "control", "--iters", "0"], ["--iters must be at least 1"]),
    ("smoke-iters-negative", ["smoke", "control", "--iters", "-1"], ["--iters", "got -1"]),
    ("smoke-lr-0", ["smoke", "control", "--lr", "0"], ["--lr must be a positive number"]),
    ("smoke-lr-nan", ["smoke", "control", "--lr", "nan"], ["--lr"]),
    ("smoke-frame-every-0", ["smoke", "control", "--frame-every", "0"], ["--frame-every"]),
    # a UserError raised inside ti.ad.Tape (the state turns NaN/inf, or needs unbounded
    # substeps) reaches the user as itself, not as Taichi's second IndexError
    (
        "smoke-lr-1e30-inside-tape",
        ["smoke", "init-velocity", "--headless", "--grid", "8", "--steps", "2"]
        + ["--lr", "1e30", "--iters", "2", "--checkpoint-every", "0"],
        ["lower dt"],
    ),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_error(argv, words, files, tmp_path, capsys):
    argv = [str(a).format(**files) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    line = _one_error_line(capsys, argv)
    for w in words:
        assert w in line, line


# ------------------------------------------------------------------ API errors
def _substeps_unbounded():
    from taichi_dr.sim import Smoke, SmokeConfig

    sim = Smoke(SmokeConfig(shape=(4, 4), steps=1, dt=1e6))
    sim.set_initial(np.zeros((4, 4)), [np.ones(f.shape) for f in sim.init_velocity])
    sim.forward()


# (id, function that must raise UserError, words in the message)
API = [
    ("smoke-dt-1e6-substeps", _substeps_unbounded, ["substeps per step", "lower dt"]),
]


@pytest.mark.parametrize("fn, words", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_error(fn, words):
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


# ------------------------------------------------------------------ archs
def test_arch_probe_that_crashes_is_an_error(monkeypatch, capsys, tmp_path):
    """Taichi's GPU probe can segfault (OpenGL without drivers: exit 139, no message); the
    probe runs in a child process, so a crash there is an error here."""
    from taichi_dr import backend

    monkeypatch.setattr(backend, "_probed", {})
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(backend, "_PROBE", crash)
    for arch in ("gpu", "vulkan"):
        line = _one_error_line(capsys, ["render", SPHERE, "--arch", arch, "--out", tmp_path])
        assert f"arch {arch!r} is not available" in line and "(available: cpu)" in line


# ------------------------------------------------------------------ output folders
def test_stale_temporary_files_are_removed(tmp_path):
    """Files a killed run left (its process is gone) go; a live writer's and others stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".tmp-{dead}-abcd.png"
    foreign = tmp_path / ".tmp-foreign.png"  # not written by atomic_write
    live = tmp_path / f".tmp-{os.getpid()}-efgh.npz"
    keep = tmp_path / "image.png"
    for p in (stale, foreign, live, keep):
        p.write_bytes(b"x")
    io.prepare_output(tmp_path)
    assert not stale.exists() and not foreign.exists()
    assert live.exists() and keep.exists()


# ------------------------------------------------------------------ checkpoints
class _Counter:
    """A runner application: x += 1 per step; checkpointable."""

    def __init__(self):
        self.x = np.zeros(3)

    def step(self, it):
        self.x += 1
        return {"loss": float(10 - it)}

    def get(self):
        return {"x": self.x.copy()}

    def set(self, arrays):
        self.x = np.array(arrays["x"])


def _runner(out, resume=False):
    return Runner(out, "counter", {}, headless=True, checkpoint_every=2, resume=resume)


def _damage(path, how):
    good = dict(np.load(path))
    if how == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no-app":
        good.pop("app")
        np.savez(path, **good)
    elif how == "pickled":
        np.savez(path, **{**good, "losses": np.array([{"a": 1}], dtype=object)})
    elif how == "nan-state":
        np.savez(path, **{**good, "state/x": np.full(3, np.nan)})
    elif how == "iteration-500":
        np.savez(path, **{**good, "iteration": np.array(500)})
    elif how == "iteration-negative":
        np.savez(path, **{**good, "iteration": np.array(-5)})
    elif how == "iteration-float":
        np.savez(path, **{**good, "iteration": np.array(2.5)})


CHECKPOINTS = [
    ("garbage", "damaged"),
    ("truncated", "damaged"),
    ("empty", "damaged"),
    ("no-app", "damaged"),
    ("pickled", "damaged"),
    ("nan-state", "NaN or inf"),
    ("iteration-500", "past the 4 asked for"),
    ("iteration-negative", "damaged"),
    ("iteration-float", "damaged"),
]


@pytest.mark.parametrize("how, words", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_bad_checkpoint(how, words, tmp_path):
    _runner(tmp_path).run(_Counter().step, 2, state=_Counter())
    path = tmp_path / "checkpoint.npz"
    _damage(path, how)
    app = _Counter()
    with pytest.raises(UserError) as info:
        _runner(tmp_path, resume=True).run(app.step, 4, state=app)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message
    assert np.all(app.x == 0)  # nothing was loaded


def test_resume_keeps_wall_time(tmp_path):
    first = _runner(tmp_path)
    first.run(_Counter().step, 2, state=_Counter())
    resumed = _runner(tmp_path, resume=True)
    resumed.run(_Counter().step, 4, state=_Counter())
    assert resumed.wall_time > first.wall_time > 0
    assert [r["iteration"] for r in resumed.records] == [0, 1, 2, 3]


def test_ctrl_c_stops_after_the_iteration_with_a_checkpoint(tmp_path):
    app = _Counter()

    def step(it):
        if it == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        return app.step(it)

    r = Runner(tmp_path, "counter", {}, headless=True, checkpoint_every=10)
    records = r.run(step, 10, state=app)
    assert r.interrupted and [rec["iteration"] for rec in records] == [0, 1, 2]
    with np.load(tmp_path / "checkpoint.npz") as data:
        assert int(data["iteration"]) == 3 and np.all(data["state/x"] == 3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    again = _Counter()
    _runner(tmp_path, resume=True).run(again.step, 5, state=again)
    assert np.all(again.x == 5)


def test_case_count():
    n = len(CLI) + len(API) + len(CHECKPOINTS) + 5
    print(f"bad-input cases: {n}")
    assert n >= 25
