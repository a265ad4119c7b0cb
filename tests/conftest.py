"""Shared fixtures. The whole suite runs in one process on cpu in float64 (gradchecks need
it); Taichi is started once, so kernels compile once and are shared between tests.
``TAICHI_DR_TEST_ARCH=cuda`` runs the in-process tests on another backend (subprocess
tests keep their own ``--arch``)."""

import os

import numpy as np
import pytest

import taichi_dr


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


_RENDERERS = {}


def shared_renderer(mesh, camera, **settings):
    """One Renderer per resolution for the whole session (Taichi compiles the kernels of
    each renderer instance once; sharing keeps the suite fast). Capacity: 6,000 faces."""
    from taichi_dr.render.pipeline import Renderer

    key = (camera.width, camera.height)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(mesh, camera, max_vertices=6000, max_faces=6000)
    r = _RENDERERS[key]
    r.configure(
        **{"shading": "blinn-phong", "cull": "none", "background": (0.0, 0.0, 0.0), **settings}
    )
    r.set_mesh(mesh)
    r.set_camera(camera)
    r.lights.set()
    r.material.set()
    return r
