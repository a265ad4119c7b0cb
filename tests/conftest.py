"""Shared fixtures. The whole suite runs in one process on cpu in float64 (gradchecks need
it); Taichi is started once, so kernels compile once and are shared between tests."""

import numpy as np
import pytest

import taichi_dr


@pytest.fixture(scope="session", autouse=True)
def taichi_f64():
    taichi_dr.init(arch="cpu", precision="f64")
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
