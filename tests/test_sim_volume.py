"""Volume renderer: forward against an independent float64 NumPy ray marcher, float64
central-difference gradchecks (density, absorption, emission), and a gradcheck of
simulation → rendering → loss end to end."""

import math

import numpy as np
import pytest
import scipy.ndimage
import taichi as ti

from taichi_dr.camera import Camera
from taichi_dr.errors import UserError
from taichi_dr.sim import Smoke, SmokeConfig, VolumeRenderer

SHAPE = (7, 6, 5)
STEPS = 12
VIEWS = [  # (eye, center, up, fov); the second sees part of the box, the rest is background
    ((0.4, 0.8, 3.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), 40.0),
    ((2.5, -1.0, -1.2), (0.6, 0.2, 0.0), (0.0, 0.0, 1.0), 30.0),
]
W, H = 9, 7
PARAMS = dict(absorption=1.7, emission=(1.0, 0.5, 0.25), background=(0.1, 0.2, 0.3))
_SHARED = {}


def _renderer():
    if "r" not in _SHARED:
        cams = [Camera.look_at(e, c, u, fov, W, H, 0.5, 20.0) for e, c, u, fov in VIEWS]
        _SHARED["r"] = VolumeRenderer(SHAPE, cams, steps=STEPS, **PARAMS)
        _SHARED["d"] = ti.field(ti.f64, SHAPE, needs_grad=True)
    r = _SHARED["r"]
    r.set_params(**PARAMS)
    return r, _SHARED["d"]


def reference_render(density, view, absorption, emission, background, steps):
    """Float64 NumPy ray marcher written from the module docstring: rays from the eye
    through pixel centres (built from the look-at frame, not from matrices), cut to the
    box and the near plane, midpoint samples (trilinear with scipy), left-Riemann
    transmittance."""
    eye, center, up = (np.asarray(v, float) for v in view[:3])
    fov = view[3]
    near = 0.5
    n = np.asarray(density.shape, float)
    half = n / n.max()
    lo, hi, h = -half, half, 2 * half / n
    f = (center - eye) / np.linalg.norm(center - eye)
    s = np.cross(f, up)
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    tan = math.tan(math.radians(fov) / 2)
    img = np.zeros((H, W, 3))
    for y in range(H):
        for x in range(W):
            ndc = ((x + 0.5) / W * 2 - 1, 1 - (y + 0.5) / H * 2)
            d = f + ndc[0] * tan * (W / H) * s + ndc[1] * tan * u
            d /= np.linalg.norm(d)
            t_lo, t_hi = near / (d @ f), np.inf
            for a in range(3):
                if d[a] == 0:
                    continue
                t1, t2 = sorted(((lo[a] - eye[a]) / d[a], (hi[a] - eye[a]) / d[a]))
                t_lo, t_hi = max(t_lo, t1), min(t_hi, t2)
            ds = max(t_hi - t_lo, 0.0) / steps
            pts = eye + (t_lo + (np.arange(steps) + 0.5)[:, None] * ds) * d
            idx = ((pts - lo) / h - 0.5).T
            rho = scipy.ndimage.map_coordinates(density, idx, order=1, mode="nearest")
            tau = absorption * ds * np.concatenate([[0.0], np.cumsum(rho)])
            e = np.sum(np.exp(-tau[:-1]) * rho * ds)
            img[y, x] = np.asarray(emission) * e + np.asarray(background) * np.exp(-tau[-1])
    return img


def test_forward_matches_numpy_reference(rng):
    r, d = _renderer()
    density = rng.random(SHAPE) * 1.5
    d.from_numpy(density)
    r.forward(d)
    images = r.images()
    assert images.shape == (2, H, W, 3)
    for v, view in enumerate(VIEWS):
        ref = reference_render(density, view, steps=STEPS, **PARAMS)
        np.testing.assert_allclose(images[v], ref, rtol=1e-10, atol=1e-12)
    hit = np.any(images != np.asarray(PARAMS["background"]), axis=-1)
    assert 0.2 < hit.mean() < 0.95  # some rays miss the box: background there


def test_empty_volume_shows_background():
    r, d = _renderer()
    d.fill(0)
    r.forward(d)
    np.testing.assert_array_equal(r.images(), np.broadcast_to(PARAMS["background"], (2, H, W, 3)))


def test_gradcheck_density_absorption_emission(rng):
    """<∇L, δ> against float64 central differences of L = Σ w · image."""
    r, d = _renderer()
    weights = rng.standard_normal((2, H, W, 3))
    base_density = rng.random(SHAPE) + 0.2
    base_sigma, base_eps = PARAMS["absorption"], np.asarray(PARAMS["emission"])
    loss = ti.field(ti.f64, (), needs_grad=True)
    w = ti.field(ti.f64, weights.shape)
    w.from_numpy(weights)

    @ti.kernel
    def weighted(img: ti.template(), w: ti.template(), loss: ti.template()):
        for I in ti.grouped(img):
            loss[None] += img[I] * w[I]

    def value(density, sigma, eps):
        d.from_numpy(density)
        r.set_params(absorption=sigma, emission=eps)
        r.forward(d)
        return float(np.sum(r.images() * weights))

    value(base_density, base_sigma, base_eps)
    d.grad.fill(0)
    r.zero_grad()
    with ti.ad.Tape(loss):
        r.render(d)
        weighted(r.image, w, loss)
    g_rho, g_sigma, g_eps = d.grad.to_numpy(), r.absorption.grad[None], r.emission.grad.to_numpy()
    assert np.abs(g_rho).max() > 1e-2 and abs(g_sigma) > 1e-2
    h = 1e-6
    for _ in range(3):
        delta = rng.standard_normal(SHAPE)
        fd = value(base_density + h * delta, base_sigma, base_eps)
        fd -= value(base_density - h * delta, base_sigma, base_eps)
        assert np.sum(g_rho * delta) == pytest.approx(fd / (2 * h), rel=1e-6, abs=1e-9)
    fd = value(base_density, base_sigma + h, base_eps) - value(
        base_density, base_sigma - h, base_eps
    )
    assert g_sigma == pytest.approx(fd / (2 * h), rel=1e-6)
    for c in range(3):
        e = np.eye(3)[c] * h
        fd = value(base_density, base_sigma, base_eps + e)
        fd -= value(base_density, base_sigma, base_eps - e)
        assert g_eps[c] == pytest.approx(fd / (2 * h), rel=1e-6)


def test_smoke_to_image_gradcheck(rng):
    """d(image loss)/d(initial density) through a 3D smoke rollout and the renderer."""
    sim = Smoke(
        SmokeConfig(shape=SHAPE, steps=3, dt=0.5, buoyancy=0.6, solver="jacobi", checkpoint=2)
    )
    r, _ = _renderer()
    weights = ti.field(ti.f64, r.image.shape)
    weights.from_numpy(rng.standard_normal(r.image.shape))
    loss = ti.field(ti.f64, (), needs_grad=True)

    @ti.kernel
    def weighted(img: ti.template(), w: ti.template(), loss: ti.template()):
        for I in ti.grouped(img):
            loss[None] += img[I] * w[I]

    base = rng.random(SHAPE) + 0.2
    vel = [0.3 * rng.standard_normal(f.shape) for f in sim.init_velocity]

    def value(density):
        sim.set_initial(density, vel)
        loss[None] = 0
        sim.forward()
        r.forward(sim.out_density)
        weighted(r.image, weights, loss)
        return loss[None]

    value(base)
    grads = []
    for _ in range(2):  # as in the optimisation loop: only the parameter's gradient is cleared
        sim.init_density.grad.fill(0)
        with ti.ad.Tape(loss, clear_gradients=False):
            sim.run()
            r.render(sim.out_density)
            weighted(r.image, weights, loss)
        grads.append(sim.init_density.grad.to_numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)
    grad = grads[0]
    assert np.abs(grad).max() > 1e-3
    for _ in range(2):
        delta = rng.standard_normal(SHAPE)
        fd = (value(base + 1e-6 * delta) - value(base - 1e-6 * delta)) / 2e-6
        assert np.sum(grad * delta) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_bad_input():
    cam = Camera.look_at((0, 0, 3), width=8, height=8)
    with pytest.raises(UserError, match="3 axes"):
        VolumeRenderer((8, 8), cam)
    with pytest.raises(UserError, match="same resolution"):
        VolumeRenderer((4, 4, 4), [cam, Camera.look_at((0, 0, 3), width=8, height=6)])
    with pytest.raises(UserError, match="steps must be a positive"):
        VolumeRenderer((4, 4, 4), cam, steps=0)
    with pytest.raises(UserError, match="too many samples"):
        VolumeRenderer((4, 4, 4), Camera.look_at((0, 0, 3), width=4096, height=4096), steps=32)
    with pytest.raises(UserError, match="box must be"):
        VolumeRenderer((4, 4, 4), cam, box=((0, 0, 0), (1, -1, 1)))
    r, d = _renderer()
    with pytest.raises(UserError, match="absorption must be"):
        r.set_params(absorption=-1.0)
    with pytest.raises(UserError, match="emission must be"):
        r.set_params(emission=(1.0, 2.0))
    with pytest.raises(UserError, match="expected"):
        r.forward(ti.field(ti.f64, (4, 4, 4)))
