"""2D/3D smoke solver: physical invariants and float64 gradchecks of each stage and of whole
rollouts (central differences along random directions, independent of Taichi's AD)."""

import numpy as np
import pytest
import taichi as ti

from taichi_dr.errors import UserError
from taichi_dr.sim import Smoke, SmokeConfig, dt_for_cfl, grid_to_image, image_to_grid

BOUNDARIES = ["closed", "open", "periodic", (("periodic", "periodic"), ("closed", "open"))]


@ti.kernel
def _weighted_sum(f: ti.template(), w: ti.template(), loss: ti.template()):
    for I in ti.grouped(f):
        loss[None] += f[I] * w[I]


# Each Smoke instance compiles its own kernels (seconds), so tests share a few configurations.
CONFIGS = {
    "A": dict(boundary="closed", solver="cg", buoyancy=0.5, controls=True),
    "B": dict(boundary="periodic", solver="jacobi", advection="maccormack"),
    "C": dict(
        boundary=(("periodic", "periodic"), ("closed", "open")),
        solver="cg",
        controls=True,
        buoyancy=0.4,
    ),
    "D": dict(boundary="open", solver="jacobi", advection="maccormack", buoyancy=0.3),
    # semi-Lagrangian (hand-written adjoint) across a periodic side of 6 (wrap without mask)
    "E": dict(boundary="periodic", solver="jacobi"),
}
_CACHE = {}


def _sim(shape=(8, 6), **kw):
    kw.setdefault("steps", 1)
    kw.setdefault("dt", 0.7)
    kw.setdefault("cg_tol", 1e-13)
    return Smoke(SmokeConfig(shape=shape, **kw))


def _shared(name, **extra):
    """The shared 8×6, 7-step, checkpoint-3 simulation of configuration ``name``."""
    key = (name, tuple(sorted(extra.items())))
    if key not in _CACHE:
        kw = dict(steps=7, dt=0.5, checkpoint=3, **CONFIGS[name])
        kw.update(extra)
        _CACHE[key] = _sim(**kw)
    return _CACHE[key]


def _randomize(sim, rng, speed=1.5):
    sim.set_initial(
        rng.random(sim.shape) + 0.5,
        [speed * rng.standard_normal(f.shape) for f in sim.init_velocity],
    )
    if sim.force is not None:
        for f in sim.force:
            f.from_numpy(rng.standard_normal(f.shape))


def _directional_check(params, outputs, forward, backward, rng, eps=1e-6, rtol=1e-6):
    """Compare <grad L, δ> with central differences of L = Σ w·out along random δ."""
    weights = [rng.standard_normal(o.shape) for o in outputs]

    def loss():
        forward()
        return sum(float(np.sum(o.to_numpy() * w)) for o, w in zip(outputs, weights))

    base = [p.to_numpy() for p in params]
    loss()
    for p in params:
        p.grad.fill(0)
    for o, w in zip(outputs, weights):
        o.grad.from_numpy(w)
    backward()
    grads = [p.grad.to_numpy() for p in params]
    assert all(np.abs(g).max() > 1e-3 for g in grads), "a parameter gets no gradient"
    for _ in range(2):
        delta = [rng.standard_normal(b.shape) for b in base]
        vals = []
        for sign in (1, -1):
            for p, b, d in zip(params, base, delta):
                p.from_numpy(b + sign * eps * d)
            vals.append(loss())
        for p, b in zip(params, base):
            p.from_numpy(b)
        fd = (vals[0] - vals[1]) / (2 * eps)
        ad = sum(float(np.sum(g * d)) for g, d in zip(grads, delta))
        assert ad == pytest.approx(fd, rel=rtol, abs=1e-8), (ad, fd)


def _ops(sim, *names):
    ops = [op for op in sim._ops(0, 0) if op[0].__name__ in names]
    assert ops
    return ops


def _run_ops(ops, grad=False):
    for fwd, bwd, args in reversed(ops) if grad else ops:
        (bwd if grad else fwd)(*args)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_advection_gradcheck(name, rng):
    sim = _shared(name)
    advection = sim.cfg.advection
    _randomize(sim, rng)
    sim._load_initial()
    ops = _ops(sim, "_advect", "_maccormack", "_advect_all")
    assert len(ops) == (9 if advection == "maccormack" else 1)
    _directional_check(
        [sim.density, *sim.velocity],
        [sim.density, *sim._vel_adv],  # slot 1 of density, the advected velocity
        lambda: _run_ops(ops),
        lambda: _run_ops(ops, grad=True),
        rng,
    )


@pytest.mark.parametrize(
    "boundary, slab_scatter", [("periodic", True), ("closed", True), ("closed", False)]
)
def test_advection_adjoint_scatters(boundary, slab_scatter, rng):
    """The CPU scatter in 4 slabs along axis 0 (2 in parallel per pass; across a periodic
    side, or with the extra face of a closed one) and the atomic scatter (GPUs) are exact
    adjoints; the slab scatter equals the serial one (1 slab)."""
    dt = 0.5
    sim = _sim(shape=(24, 5), boundary=boundary, solver="jacobi", dt=dt)
    sim._slab_scatter, sim._max_slabs = slab_scatter, 4  # forced before the kernels compile
    _randomize(sim, rng, speed=0.3)
    sim._load_initial()
    if slab_scatter:
        assert sim._scatter_slabs(0, dt) == 4
    ops = _ops(sim, "_advect_all")
    outputs = [sim.density, *sim._vel_adv]
    _directional_check(
        [sim.density, *sim.velocity],
        outputs,
        lambda: _run_ops(ops),
        lambda: _run_ops(ops, grad=True),
        rng,
    )
    if slab_scatter:
        grads, seeds = [], [rng.standard_normal(f.shape) for f in outputs]
        seeds[0][0] = 0.0  # density: the gradient of slot 1 only
        for slabs in (4, 1):
            for f in sim.velocity:
                f.grad.fill(0.0)
            for f, seed in zip(outputs, seeds):
                f.grad.from_numpy(seed)
            sim._advect_all_adjoint(0, dt, slabs)
            grads.append([f.grad.to_numpy() for f in sim._state()])
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["A", "C", "D"])
def test_forces_gradcheck(name, rng):
    sim = _shared(name)
    _randomize(sim, rng)
    sim._load_initial()
    ops = _ops(sim, "_add_forces")
    assert len(ops) == 2
    _directional_check(
        [sim.density, *(sim.force or []), *sim._vel_adv],
        [*sim._vel_adv],
        lambda: _run_ops(ops),
        lambda: _run_ops(ops, grad=True),
        rng,
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_projection_gradcheck(name, rng):
    sim = _shared(name)
    for f in sim._vel_adv:
        f.from_numpy(rng.standard_normal(f.shape))
    ops = _ops(sim, "_projection")
    assert len(ops) == 1
    _directional_check(
        [*sim._vel_adv],
        [*sim.velocity],
        lambda: _run_ops(ops),
        lambda: _run_ops(ops, grad=True),
        rng,
    )


@pytest.mark.parametrize("name", ["A", "C"])
def test_cg_projection_removes_divergence(name, rng):
    sim = _shared(name)
    for tol in (1e-9, 1e-3):
        sim.solver.tol = tol
        _randomize(sim, rng)
        sim.forward()
        # the divergence left by a CG solve is the residual it reports
        assert sim.max_divergence() == pytest.approx(sim.solver.residual, rel=1e-6, abs=1e-12)
        assert sim.max_divergence() <= tol
    sim.solver.tol = sim.cfg.cg_tol


def test_jacobi_matches_numpy_reference(rng):
    """Fixed-sweep Jacobi in an open box equals the same iteration written in NumPy."""
    sim = _shared("D")  # open on all sides: p = 0 outside, 4 neighbours everywhere
    b = rng.standard_normal(sim.shape)
    sim.solver.rhs.from_numpy(b)
    sim.solver.forward()
    x = np.zeros_like(b)
    for _ in range(sim.cfg.jacobi_iters):
        xp = np.pad(x, 1)
        x = (b + xp[:-2, 1:-1] + xp[2:, 1:-1] + xp[1:-1, :-2] + xp[1:-1, 2:]) / 4.0
    np.testing.assert_allclose(sim.solver.p.to_numpy(), x, rtol=1e-12)


def test_uniform_flow_translates_density_periodic():
    sim = _shared("B")  # periodic 8×6, dt 0.5, 7 steps, MacCormack + Jacobi
    d = np.zeros(sim.shape)
    d[3, 2], d[6, 5] = 1.0, 0.5
    vel = [np.full(sim.init_velocity[0].shape, 2.0), np.zeros(sim.init_velocity[1].shape)]
    sim.set_initial(d, vel)
    sim.forward()
    np.testing.assert_allclose(sim.out_density.to_numpy(), np.roll(d, 7, axis=0), atol=1e-12)
    np.testing.assert_allclose(sim.out_velocity[0].to_numpy(), 2.0, atol=1e-12)


def test_closed_box_nothing_leaks_through_walls(rng):
    sim = _shared("A")
    _randomize(sim, rng)
    sim.forward()
    u, v = (f.to_numpy() for f in sim.out_velocity)
    assert np.all(u[0] == 0) and np.all(u[-1] == 0)
    assert np.all(v[:, 0] == 0) and np.all(v[:, -1] == 0)


def _rollout_check(sim, rng, params=None):
    params = params or [sim.init_density, *sim.init_velocity, *(sim.force or [])]
    loss = ti.field(sim.out_density.dtype, (), needs_grad=True)
    outs = [sim.out_density, *sim.out_velocity]
    weights = []
    for o in outs:
        w = ti.field(o.dtype, o.shape)
        w.from_numpy(rng.standard_normal(o.shape))
        weights.append(w)

    def forward():
        sim.run()
        for o, w in zip(outs, weights):
            _weighted_sum(o, w, loss)

    base = [p.to_numpy() for p in params]
    sim.zero_grad()
    with ti.ad.Tape(loss, clear_gradients=False):  # clearing every field of the process is slow
        forward()
    grads = [p.grad.to_numpy() for p in params]
    assert all(np.abs(g).max() > 1e-3 for g in grads), "a parameter gets no gradient"
    eps = 1e-6
    for _ in range(2):
        delta = [rng.standard_normal(b.shape) for b in base]
        vals = []
        for sign in (1, -1):
            for p, b, d in zip(params, base, delta):
                p.from_numpy(b + sign * eps * d)
            loss[None] = 0
            forward()
            vals.append(loss[None])
        for p, b in zip(params, base):
            p.from_numpy(b)
        fd = (vals[0] - vals[1]) / (2 * eps)
        ad = sum(float(np.sum(g * d)) for g, d in zip(grads, delta))
        assert ad == pytest.approx(fd, rel=1e-6, abs=1e-8)
    return grads


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rollout_gradcheck_with_checkpointing(name, rng):
    """A 7-step rollout in segments of 3 (replayed backwards) under ti.ad.Tape."""
    sim = _shared(name)
    _randomize(sim, rng, speed=1.0)
    _rollout_check(sim, rng)


def test_checkpointing_matches_full_tape():
    grads = []
    for extra in ({}, {"checkpoint": 7}):
        sim = _shared("A", **extra)
        _randomize(sim, np.random.default_rng(5), speed=1.0)
        grads.append(_rollout_check(sim, np.random.default_rng(6)))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("boundary", ["closed", "periodic"])
def test_rollout_gradcheck_3d(boundary, rng):
    kw = dict(steps=3, dt=0.5, checkpoint=2, buoyancy=0.3, solver="cg", boundary=boundary)
    sim = _sim(shape=(5, 6, 4), **kw)
    _randomize(sim, rng, speed=1.0)
    _rollout_check(sim, rng)


def test_cfl_substeps_warn_and_stay_differentiable(rng):
    sim = _shared("A")  # dt 0.5, cfl_limit 4
    _randomize(sim, rng, speed=1.0)
    vel = sim.init_velocity[0].to_numpy()
    vel[3, 3] = 10.0  # CFL 5
    sim.init_velocity[0].from_numpy(vel)
    with pytest.warns(UserWarning, match="substeps"):
        sim.forward()
    assert sim.substeps == 2 and sim.micro_steps == 14
    with pytest.warns(UserWarning):
        _rollout_check(sim, rng)


def test_nan_in_state_names_the_step(rng):
    sim = _shared("A")
    _randomize(sim, rng)
    force = sim.force[1].to_numpy()
    force[4, 2, 2] = np.inf  # a control force at step 5 (0-based 4)
    sim.force[1].from_numpy(force)
    with pytest.raises(UserError, match="NaN/inf at step 5 of 7"):
        sim.forward()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dt=0.0), "dt must be a positive"),
        (dict(dt=-1.0), "dt must be a positive"),
        (dict(shape=(3, 8)), "at least 4 cells"),
        (dict(shape=(8,), up_axis=0), "2 or 3 axes"),
        (dict(shape=(1 << 20, 1 << 20)), "too large for memory"),
        (dict(steps=0), "steps must be"),
        (dict(boundary="wavy"), "unknown boundary"),
        (dict(boundary=(("periodic", "closed"), "closed")), "periodic needs both"),
        (dict(solver="sor"), "unknown pressure solver"),
        (dict(advection="rk4"), "unknown advection"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(UserError, match=match):
        _sim(**kw)


def test_bad_initial_arrays():
    sim = _shared("A")
    with pytest.raises(UserError, match=r"density must have shape \(8, 6\)"):
        sim.set_initial(density=np.zeros((6, 8)))
    with pytest.raises(UserError, match="NaN"):
        sim.set_initial(density=np.full((8, 6), np.nan))
    with pytest.raises(UserError, match="2 face arrays"):
        sim.set_initial(velocity=[np.zeros((9, 6))])


def test_helpers():
    assert dt_for_cfl(2.0, 4.0) == 0.5
    with pytest.raises(UserError):
        dt_for_cfl(0.0, 1.0)
    img = np.arange(12).reshape(3, 4)
    cells = image_to_grid(img)
    assert cells.shape == (4, 3) and cells[0, 0] == img[2, 0] and cells[0, 2] == img[0, 0]
    np.testing.assert_array_equal(grid_to_image(cells), img)


def test_repeated_tapes_do_not_accumulate(rng):
    """Repeated Tapes without clearing all gradients (as the optimisation loops do) give the
    same gradient each time (the outputs' gradients are consumed by the backward pass)."""
    sim = _shared("A")
    _randomize(sim, rng, speed=1.0)
    w = ti.field(ti.f64, sim.shape)
    w.from_numpy(rng.standard_normal(sim.shape))
    loss = ti.field(ti.f64, (), needs_grad=True)
    grads = []
    for _ in range(2):
        sim.zero_grad()
        with ti.ad.Tape(loss, clear_gradients=False):
            sim.run()
            _weighted_sum(sim.out_density, w, loss)
        grads.append(sim.init_density.grad.to_numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)
