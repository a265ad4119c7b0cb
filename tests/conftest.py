"""Shared fixtures. The whole suite runs in one process on cpu in float64 (gradchecks need
it); Taichi is started once, so kernels compile once and are shared between tests.
``TAICHI_DR_TEST_ARCH=cuda`` runs the in-process tests on another backend (subprocess
tests keep their own ``--arch``)."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import taichi_dr

ROOT = Path(__file__).resolve().parents[1]


def skip(reason):
    """Skip with the reason printed (GUI tests never skip silently)."""
    print(f"SKIP: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def taichi_f64():
    arch = os.environ.get("TAICHI_DR_TEST_ARCH", "cpu")
    taichi_dr.init(arch=arch, precision="f64", forward_mode=True)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def gradcheck_scene():
    """The check-grads scene (a lit, textured sphere at 24×24 with weighted-sum loss),
    shared so that its reverse-mode kernels compile once for every test that needs them."""
    from taichi_dr.checks import Scene

    return Scene(seed=3)


def shared_renderer(mesh, camera, **settings):
    """A renderer with the tests' default settings (the kernels compile once per process
    for every renderer, so a new one costs nothing)."""
    from taichi_dr import Renderer, RenderSettings

    defaults = {"shading": "blinn-phong", "cull": "none", "background": (0.0, 0.0, 0.0)}
    return Renderer(mesh, camera, RenderSettings(**{**defaults, **settings}))


def project(*outputs, k=3):
    """k fixed random weighted sums of torch tensors ``outputs``: ``torch.autograd.gradcheck``
    then checks the full Jacobian over the inputs with k backward passes, not one per
    output element."""
    import torch

    flat = torch.cat([o.reshape(-1) for o in outputs])
    g = torch.Generator().manual_seed(flat.numel())
    weights = torch.rand(k, flat.numel(), generator=g, dtype=flat.dtype) - 0.5
    return weights @ flat


@pytest.fixture(scope="session")
def ggui(tmp_path_factory):
    """Skips unless GGUI can open an (invisible) window: it needs a Vulkan driver."""
    from taichi_dr import UserError
    from taichi_dr.apps.viewer import open_window

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("ggui"))  # GGUI writes imgui.ini into the cwd
        try:
            open_window(8, 8, show=False).destroy()
        except UserError as exc:
            skip(f"GGUI unavailable here (needs a Vulkan driver, e.g. lavapipe): {exc}")


@pytest.fixture
def xvfb():
    """An Xvfb server; yields the environment (DISPLAY, PYTHONPATH) for subprocesses."""
    if shutil.which("Xvfb") is None:
        skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    number = b""
    while not number.endswith(b"\n"):
        chunk = os.read(read, 16)
        if not chunk:
            proc.kill()
            skip("Xvfb did not start")
        number += chunk
    os.close(read)
    env = dict(os.environ, DISPLAY=":" + number.decode().strip(), PYTHONPATH=str(ROOT))
    env["XDG_RUNTIME_DIR"] = tempfile.mkdtemp()
    yield env
    proc.terminate()
    proc.wait(10)
