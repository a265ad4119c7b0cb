"""Optimizers over Taichi ndarrays and fields against NumPy float64 references of the
same updates, their state round trip, schedules against closed forms, the large-steps
parameterisation, one compile for every size, bad input."""

import itertools
import math

import numpy as np
import pytest
import taichi as ti

from taichi_dr import UserError, icosphere, optim

VEC3 = ti.types.vector(3, ti.f64)


def scalar_param(shape, container="ndarray"):
    if container == "field":
        return ti.field(ti.f64, shape=shape, needs_grad=True)
    return ti.ndarray(ti.f64, shape, needs_grad=True)


def vector_param(n, container="ndarray"):
    if container == "field":
        return ti.Vector.field(3, ti.f64, shape=n, needs_grad=True)
    return ti.ndarray(VEC3, n, needs_grad=True)


def params_and_grads(rng, steps, container="ndarray"):
    """A scalar (4, 5) and a 3-vector (6,) parameter (ndarrays or fields), and per-step
    random gradients for each."""
    a, b = scalar_param((4, 5), container), vector_param(6, container)
    x0 = [rng.normal(size=(4, 5)), rng.normal(size=(6, 3))]
    for f, x in zip((a, b), x0):
        f.from_numpy(x)
    grads = [[rng.normal(size=x.shape) for x in x0] for _ in range(steps)]
    return (a, b), x0, grads


def run(opt, params, grads):
    for g in grads:
        for f, gk in zip(params, g):
            f.grad.from_numpy(gk)
        opt.step()
    return [f.to_numpy() for f in params]


def ref_adam(x0, grads, lrs, factors, b1, b2, eps, uniform):
    out = []
    for k, x in enumerate(x0):
        x, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
        for t, g in enumerate(grads, start=1):
            g = g[k]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            root = np.sqrt(v / (1 - b2**t))
            denom = root.max() if uniform else root
            x -= lrs[k] * factors[t - 1] * (m / (1 - b1**t)) / (denom + eps)
        out.append(x)
    return out


@pytest.mark.parametrize("container", ["ndarray", "field"])
@pytest.mark.parametrize("uniform", [False, True])
def test_adam_matches_numpy_reference(rng, uniform, container):
    steps = 6
    (a, b), x0, grads = params_and_grads(rng, steps, container)
    schedule = optim.ExponentialDecay(0.8)
    opt = optim.Adam(
        [a, {"params": [b], "lr": 0.3}],
        lr=0.05,
        betas=(0.8, 0.95),
        eps=1e-3,
        schedule=schedule,
        uniform=uniform,
    )
    got = run(opt, (a, b), grads)
    want = ref_adam(
        x0, grads, [0.05, 0.3], [0.8**t for t in range(steps)], 0.8, 0.95, 1e-3, uniform
    )
    for g, w, x in zip(got, want, x0):
        assert np.abs(w - x).max() > 0.05  # the reference really moved
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("container", ["ndarray", "field"])
def test_sgd_matches_numpy_reference(rng, container):
    steps = 5
    (a, b), x0, grads = params_and_grads(rng, steps, container)
    opt = optim.SGD([a, b], lr=[0.1, 0.02], momentum=0.9, schedule=optim.StepDecay(2, 0.5))
    got = run(opt, (a, b), grads)
    for k, (x, lr) in enumerate(zip(x0, [0.1, 0.02])):
        x, buf = x.copy(), np.zeros_like(x)
        for t, g in enumerate(grads):
            buf = 0.9 * buf + g[k]
            x -= lr * 0.5 ** (t // 2) * buf
        np.testing.assert_allclose(got[k], x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("container", ["ndarray", "field"])
def test_param_group_forms_and_zero_grad(rng, container):
    (a, b), _, grads = params_and_grads(rng, 1, container)
    opt = optim.Adam([(a, 0.5), b], lr=0.1)
    assert [opt.lr(0), opt.lr(1)] == [0.5, 0.1]
    run(opt, (a, b), grads)
    opt.zero_grad()
    assert not a.grad.to_numpy().any() and not b.grad.to_numpy().any()
    assert optim.SGD(a, lr=0.2).lr() == 0.2
    named = optim.SGD([{"params": [a], "lr": 0.3, "name": "albedo"}, b], lr=0.1)
    assert named.names == ["parameter 'albedo'", "parameter 1"]
    assert [named.lr(0), named.lr(1)] == [0.3, 0.1]


@pytest.mark.parametrize("container", ["ndarray", "field"])
@pytest.mark.parametrize(
    "make", [lambda p: optim.Adam(p, lr=0.1), lambda p: optim.SGD(p, 0.1, 0.9)]
)
def test_state_dict_round_trip(rng, container, make):
    """Stop after 3 steps, save parameters and state, continue 2 steps; a new optimizer
    loaded from the saved state continues identically."""
    (a, b), _, grads = params_and_grads(rng, 5, container)
    opt = make([a, b])
    run(opt, (a, b), grads[:3])
    saved, state = [a.to_numpy(), b.to_numpy()], opt.state_dict()
    assert int(state["steps"]) == 3 and all(isinstance(x, np.ndarray) for x in state.values())
    want = run(opt, (a, b), grads[3:])
    a.from_numpy(saved[0])
    b.from_numpy(saved[1])
    fresh = make([a, b])
    fresh.load_state_dict(dict(np.load(npz_round_trip(state))))
    assert fresh.steps == 3
    for got, w in zip(run(fresh, (a, b), grads[3:]), want):
        np.testing.assert_array_equal(got, w)
    # a state of other parameters is refused, naming the problem
    other = make([b, a])
    with pytest.raises(UserError, match="has shape .* it was saved for other parameters"):
        other.load_state_dict(state)
    with pytest.raises(UserError, match="lacks 'steps'"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "steps"})


@pytest.mark.parametrize("container", ["ndarray", "field"])
def test_checkpoint_round_trip_and_mismatch(rng, container):
    """optim.Checkpoint: parameters and Adam's state through an .npz continue identically;
    a checkpoint of other shapes or without the optimizer is refused before anything
    changes, naming the settings."""
    (a, b), _, grads = params_and_grads(rng, 5, container)
    opt = optim.Adam([a, b], lr=0.1)
    run(opt, (a, b), grads[:3])
    state = optim.Checkpoint({"a": a, "b": b}, {"adam": opt}, "grid").get()
    assert sorted(state) == ["adam/m/0", "adam/m/1", "adam/steps", "adam/v/0", "adam/v/1",
                             "param/a", "param/b"]  # fmt: skip
    want = run(opt, (a, b), grads[3:])
    fresh = optim.Adam([a, b], lr=0.1)
    optim.Checkpoint({"a": a, "b": b}, {"adam": fresh}, "grid").set(
        dict(np.load(npz_round_trip(state)))
    )
    assert fresh.steps == 3
    for got, w in zip(run(fresh, (a, b), grads[3:]), want):
        np.testing.assert_array_equal(got, w)
    before = a.to_numpy()
    for bad in (
        {**state, "param/a": state["param/a"][:2]},
        {k: v for k, v in state.items() if not k.startswith("adam/")},
    ):
        with pytest.raises(UserError, match=r"other settings \(grid differ\)"):
            optim.Checkpoint({"a": a, "b": b}, {"adam": fresh}, "grid").set(bad)
        np.testing.assert_array_equal(a.to_numpy(), before)
        assert fresh.steps == 5


def npz_round_trip(state):
    """``state`` written to and read back from an in-memory .npz (as checkpoints are)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    return buf


def test_updates_compile_once_for_every_size(rng):
    kernels = (optim._adam_arrays._primal, optim._nonfinite_arrays._primal)
    counts = []
    for n in (5, 17, 9):
        x = vector_param(n)
        x.from_numpy(rng.normal(size=(n, 3)))
        x.grad.from_numpy(rng.normal(size=(n, 3)))
        optim.Adam([x], lr=0.1).step()
        counts.append([len(k.compiled_kernels) for k in kernels])
    assert counts[0] == counts[1] == counts[2]


def test_schedules_closed_forms():
    steps = range(0, 25)
    exp, step = optim.ExponentialDecay(0.9), optim.StepDecay(5, 0.3)
    cos = optim.CosineDecay(20, min_factor=0.1)
    for t in steps:
        assert exp(t) == pytest.approx(math.exp(t * math.log(0.9)), rel=1e-12)
        assert step(t) == pytest.approx(0.3 ** math.floor(t / 5), rel=1e-12)
        want = 0.1 + 0.9 * math.cos(math.pi * min(t, 20) / 40) ** 2  # half-angle form
        assert cos(t) == pytest.approx(want, rel=1e-12)
    assert optim.Constant()(7) == 1.0
    assert [cos(0), cos(10), cos(20)] == pytest.approx([1.0, 0.55, 0.1])
    opt = optim.SGD(scalar_param(2), lr=2.0, schedule=cos)
    for _ in range(10):
        opt.step()
    assert opt.lr() == pytest.approx(2.0 * 0.55)


def nan_param(where, container):
    f = scalar_param(3, container)
    x = np.zeros(3)
    if where == "values":
        x[1] = np.nan
    f.from_numpy(x)
    if where == "gradient":
        f.grad.from_numpy(np.array([0.0, np.inf, np.nan]))
    return f


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda f: optim.Adam([f], lr=0.0), "learning rate 0.0 .* > 0"),
        (lambda f: optim.SGD([f], lr=-1e-3), "learning rate .* > 0"),
        (lambda f: optim.Adam([(f, float("nan"))]), "learning rate nan"),
        (lambda f: optim.Adam([f], lr=[0.1, 0.2]), "2 learning rates for 1"),
        (lambda f: optim.Adam([f], betas=(1.0, 0.9)), "betas"),
        (lambda f: optim.Adam([f], eps=0), "eps"),
        (lambda f: optim.SGD([f], momentum=1.0), "momentum"),
        (lambda f: optim.Adam([f, f]), "twice"),
        (lambda f: optim.Adam([np.zeros(3)]), "not a Taichi ndarray or field"),
        (lambda f: optim.Adam([ti.field(ti.f64, shape=3)]), "needs_grad"),
        (lambda f: optim.Adam([ti.ndarray(ti.f64, 3)]), "needs_grad"),
        (lambda f: optim.Adam([f, {"params": f, "name": "x"}]), "parameter 'x' is listed twice"),
        (lambda f: optim.Adam([]), "no parameters"),
        (lambda f: optim.Adam([f], schedule=0.5), "callable"),
        (lambda f: optim.ExponentialDecay(0.0), "gamma"),
        (lambda f: optim.CosineDecay(0), "total_steps"),
        (lambda f: optim.StepDecay(2, 1.5), "gamma"),
    ],
)
def test_optimizer_bad_input(make, words):
    with pytest.raises(UserError, match=words):
        make(scalar_param(3))


@pytest.mark.parametrize("container", ["ndarray", "field"])
@pytest.mark.parametrize("cls", [optim.Adam, optim.SGD])
@pytest.mark.parametrize("where", ["values", "gradient"])
def test_nonfinite_parameters_are_reported(cls, where, container):
    opt = cls([nan_param(where, container)], lr=0.1)
    count = 1 if where == "values" else 2
    with pytest.raises(UserError, match=f"parameter 0 {where} has {count} NaN/inf"):
        opt.step()


# --------------------------------------------------------------------------- large steps


def dense_system(faces, V, lam):
    """I + λ(D − A) built entry by entry from the edge set."""
    M = np.eye(V)
    edges = {tuple(sorted(map(int, e))) for f in faces for e in itertools.combinations(f, 2)}
    for i, j in edges:
        M[i, j] -= lam
        M[j, i] -= lam
        M[i, i] += lam
        M[j, j] += lam
    return M


@pytest.fixture(scope="module")
def small_sphere():
    mesh = icosphere(1)
    return mesh.vertices, mesh.faces


def positions_array(v, spare=2, container="ndarray"):
    pos = vector_param(len(v) + spare, container)
    pos.from_numpy(np.vstack([v, np.full((spare, 3), 7.0)]))
    return pos


def test_large_steps_parameterisation_round_trips(small_sphere, rng):
    v, f = small_sphere
    ls = optim.LargeSteps(positions_array(v), f, num_vertices=len(v), lam=3.0)
    M = dense_system(f, len(v), 3.0)
    np.testing.assert_allclose(ls.matrix.toarray(), M, rtol=0, atol=0)
    x = rng.normal(size=(len(v), 3))
    np.testing.assert_allclose(ls.to_differential(x), M @ x, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(ls.from_differential(ls.to_differential(x)), x, atol=1e-12)
    np.testing.assert_allclose(ls.u.to_numpy(), M @ v, atol=1e-13)


@pytest.mark.parametrize("container", ["ndarray", "field"])
def test_large_steps_step_matches_reference(small_sphere, rng, container):
    v, f = small_sphere
    V, lam, lr = len(v), 5.0, 0.05
    pos = positions_array(v, container=container)
    ls = optim.LargeSteps(pos, f, num_vertices=V, lam=lam, lr=lr, betas=(0.9, 0.99))
    M = dense_system(f, V, lam)
    grads = [rng.normal(size=(V, 3)) for _ in range(3)]
    for g in grads:
        ls.zero_grad()
        pos.grad.from_numpy(np.vstack([g, np.zeros((2, 3))]))
        ls.step()
    # the same in u = M x with dense solves: ∂/∂u = M^-T ∂/∂x, uniform Adam, x = M^-1 u
    u_grads = [[np.linalg.solve(M.T, g)] for g in grads]
    (u,) = ref_adam([M @ v], u_grads, [lr], [1.0] * 3, 0.9, 0.99, 1e-8, uniform=True)
    x = pos.to_numpy()
    np.testing.assert_allclose(x[:V], np.linalg.solve(M, u), rtol=1e-10, atol=1e-12)
    assert np.all(x[V:] == 7.0)  # spare capacity untouched
    # the state (Adam's over u, and u) restores the positions and continues identically
    state = ls.state_dict()
    again = optim.LargeSteps(
        positions_array(v, container=container), f, V, lam=lam, lr=lr, betas=(0.9, 0.99)
    )
    again.load_state_dict(state)
    np.testing.assert_allclose(again.positions.to_numpy(), x, rtol=1e-12, atol=1e-13)
    g = np.vstack([rng.normal(size=(V, 3)), np.zeros((2, 3))])
    for opt in (ls, again):
        opt.zero_grad()
        opt.positions.grad.from_numpy(g)
        opt.step()
    np.testing.assert_array_equal(again.positions.to_numpy(), pos.to_numpy())


def fit_sparse_observations(opt_kind, mesh, iterations, lr):
    """Fit a unit icosphere to the sphere of radius 1.5 when each step sees the L2 error of
    a random 5 % of the vertices (like a few views of a mesh): returns per-step mean
    vertex error and the final roughness mean ||L (x − target)||²."""
    V = mesh.num_vertices
    target = 1.5 * mesh.vertices
    pos = positions_array(mesh.vertices, spare=0)
    if opt_kind == "adam":
        opt = optim.Adam([pos], lr=lr)
    else:
        opt = optim.LargeSteps(pos, mesh.faces, lam=10.0, lr=lr)
    sample = np.random.default_rng(0)
    errors = []
    for _ in range(iterations):
        x = pos.to_numpy()
        seen = sample.random(V) < 0.05
        g = np.zeros_like(x)
        g[seen] = 2 * (x[seen] - target[seen]) / max(seen.sum(), 1)
        pos.grad.from_numpy(g)
        opt.step()
        errors.append(np.linalg.norm(pos.to_numpy() - target, axis=1).mean())
    L = optim.uniform_laplacian(mesh.faces, V)
    rough = np.mean(np.sum((L @ (pos.to_numpy() - target)) ** 2, axis=1))
    return np.array(errors), rough


def test_large_steps_beats_adam_on_sparse_gradients():
    mesh = icosphere(3)
    runs = {k: fit_sparse_observations(k, mesh, 120, lr=0.02) for k in ("adam", "large")}

    def first_below(errors, level=0.05):
        hits = np.flatnonzero(errors < level)
        return hits[0] + 1 if len(hits) else len(errors) + 1

    steps = {k: first_below(e) for k, (e, _) in runs.items()}
    assert steps["large"] <= 0.7 * steps["adam"], steps
    assert runs["large"][1] < 0.05 * runs["adam"][1], (runs["large"][1], runs["adam"][1])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(lam=0.0), "lambda"),
        (dict(lr=-0.1), "learning rate"),
        (dict(num_vertices=100), "num_vertices"),
    ],
)
def test_large_steps_bad_input(small_sphere, kwargs, words):
    v, f = small_sphere
    with pytest.raises(UserError, match=words):
        optim.LargeSteps(positions_array(v, spare=0), f, **kwargs)


def test_large_steps_reports_nan_gradient(small_sphere):
    v, f = small_sphere
    pos = positions_array(v, spare=0)
    ls = optim.LargeSteps(pos, f)
    g = np.zeros((len(v), 3))
    g[4, 1] = np.nan
    pos.grad.from_numpy(g)
    with pytest.raises(UserError, match="positions gradient has 1 NaN/inf"):
        ls.step()
