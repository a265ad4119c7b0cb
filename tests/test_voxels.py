"""Voxel grids (taichi_dr.voxels): the alpha-compositing march against an independent float64
NumPy marcher, sparse grids against dense grids holding the same values (images and
gradients), float64 central-difference gradchecks of the march and the total variation
(dense and sparse), the projected Adam step and bad input."""

import numpy as np
import pytest
import scipy.ndimage

from taichi_dr.camera import Camera
from taichi_dr.errors import UserError
from taichi_dr.sim.volume import ray_table
from taichi_dr.voxels import DenseGrid, March, SparseGrid

N, BLOCK = 8, 4
BOX = (np.full(3, -1.0), np.full(3, 1.0))
VIEWS = [((0.4, 0.8, 3.0), 40.0), ((2.5, -1.0, -1.2), 30.0), ((-0.3, 2.9, 0.6), 50.0)]
MARCH = March(step=0.6, background=(0.1, 0.2, 0.3))
_SHARED = {}


def rays():
    if "rays" not in _SHARED:
        cams = [Camera.look_at(e, (0, 0, 0), (0, 1, 0), fov, 7, 5, 0.5, 20.0) for e, fov in VIEWS]
        _SHARED["rays"] = ray_table(cams, *BOX)
    return _SHARED["rays"]


def sparse_grid(values, active=None) -> SparseGrid:
    """One sparse grid for the whole module (its kernels compile once per grid)."""
    if "sparse" not in _SHARED:
        _SHARED["sparse"] = SparseGrid(N, BOX, BLOCK)
    g = _SHARED["sparse"]
    g.set_blocks(np.ones((2, 2, 2), bool) if active is None else active, values)
    g.zero_grad()
    return g


def random_values(rng):
    v = rng.random((N, N, N, 4))
    v[..., 0] *= 3.0  # optical depth per unit length: rays see 0.1 … 0.99 opacity
    return v


def reference(values, rays, march, lo=BOX[0], h=2.0 / N):
    """Float64 NumPy marcher from the docstring of taichi_dr.sim.volume: equal segments of at
    most ``step`` cells, trilinear midpoint samples (scipy), α = 1 − exp(−ρ Δs)."""
    out = []
    for r in rays:
        o, d, t0, t1 = r[:3], r[3:6], r[6], r[7]
        length = max(t1 - t0, 0.0)
        count = int(np.ceil(length / (march.step * h)))
        ds = length / max(count, 1)
        pts = o + (t0 + (np.arange(count) + 0.5) * ds)[:, None] * d
        idx = ((pts - lo) / h - 0.5).T
        v = np.stack(
            [scipy.ndimage.map_coordinates(values[..., c], idx, order=1, mode="nearest")
             for c in range(4)], axis=1,
        ).reshape(count, 4)  # fmt: skip
        alpha = 1 - np.exp(-v[:, 0] * ds)
        T = np.concatenate([[1.0], np.cumprod(1 - alpha)])
        C = (T[:-1, None] * alpha[:, None] * v[:, 1:]).sum(0) + T[-1] * np.asarray(march.background)
        out.append(np.concatenate([C, [1 - T[-1]]]))
    return np.array(out)


def test_dense_march_matches_numpy_reference(rng):
    values = random_values(rng)
    out = DenseGrid(N, BOX, values).render(rays(), MARCH)
    np.testing.assert_allclose(out, reference(values, rays(), MARCH), rtol=1e-10, atol=1e-12)
    hit = out[:, 3] > 0
    assert 0.2 < hit.mean() < 1.0  # some rays miss the box: background there


def test_sparse_grid_equals_dense_grid_with_zeros(rng):
    """Inactive blocks read as 0: images equal a dense grid holding zeros there; gradients
    equal the dense ones on active cells and are never written elsewhere."""
    values = random_values(rng)
    active = np.zeros((2, 2, 2), bool)
    active[0, 0, 0] = active[1, 1, 0] = active[1, 0, 1] = True
    sparse = sparse_grid(values, active)
    held = sparse.to_numpy()
    inside = np.kron(active, np.ones((BLOCK,) * 3, bool))
    np.testing.assert_array_equal(held[inside], values[inside])
    assert not held[~inside].any()
    dense = DenseGrid(N, BOX, held)
    out_s, out_d = sparse.render(rays(), MARCH), dense.render(rays(), MARCH)
    np.testing.assert_array_equal(out_s, out_d)
    g = rng.standard_normal((len(rays()), 3))
    sparse.backward(rays(), MARCH, out_s, g)
    dense.backward(rays(), MARCH, out_d, g)
    gs, gd = sparse.gradients(), dense.gradients()
    np.testing.assert_allclose(gs[inside], gd[inside], rtol=1e-12, atol=1e-14)
    assert not gs[~inside].any() and np.abs(gd[~inside]).max() > 1e-3
    assert sparse.num_blocks == 3  # the backward pass allocated nothing
    # the pull sums the negative parts of the density gradient per block, active or not:
    # at least the negative part of the summed dense gradient there
    pull = sparse.pull.to_numpy()
    per_block = gd[..., 0].reshape(2, BLOCK, 2, BLOCK, 2, BLOCK).sum(axis=(1, 3, 5))
    assert np.all(pull >= np.maximum(-per_block, 0) - 1e-12)
    assert pull[~active].max() > 0


def _directional_check(grid_from, grad_of, values, rng, mask=None, rtol=1e-6):
    """<∇L, δ> against central differences of L(values + hδ) for random δ (restricted to
    ``mask``)."""
    g = grad_of(values)
    assert np.abs(g).max() > 1e-3
    for _ in range(3):
        delta = rng.standard_normal(values.shape) * (1 if mask is None else mask[..., None])
        h = 1e-6
        fd = (grid_from(values + h * delta) - grid_from(values - h * delta)) / (2 * h)
        assert np.sum(g * delta) == pytest.approx(fd, rel=rtol, abs=1e-9)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_march_gradcheck(rng, kind):
    """L = Σ w · colour: density and colour gradients (hand-written adjoint) against float64
    central differences; sparse with two active blocks, early termination on."""
    values = random_values(rng)
    weights = rng.standard_normal((len(rays()), 3))
    march = March(step=0.45, background=(0.3, 0.1, 0.2), min_transmittance=1e-3)
    active = np.zeros((2, 2, 2), bool)
    active[0, 1, 0] = active[1, 1, 1] = True
    mask = np.kron(active, np.ones((BLOCK,) * 3)) if kind == "sparse" else None

    def grid(v):
        return DenseGrid(N, BOX, v) if kind == "dense" else sparse_grid(v, active)

    def loss(v):
        return float(np.sum(grid(v).render(rays(), march)[:, :3] * weights))

    def grad(v):
        g = grid(v)
        g.backward(rays(), march, g.render(rays(), march), weights)
        return g.gradients()

    _directional_check(loss, grad, values, rng, mask)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_total_variation_gradcheck(rng, kind):
    values = random_values(rng)
    active = np.ones((2, 2, 2), bool)
    active[1, 0, 0] = False  # sparse: no differences into the inactive block

    def grid(v):
        return DenseGrid(N, BOX, v) if kind == "dense" else sparse_grid(v, active)

    def tv(v):
        return grid(v).tv(0.7, 0.2)

    def grad(v):
        g = grid(v)
        g.tv(0.7, 0.2)
        return g.gradients()

    mask = np.kron(active, np.ones((BLOCK,) * 3)) if kind == "sparse" else None
    _directional_check(tv, grad, values, rng, mask)
    flat = np.ones((N, N, N, 4))
    assert abs(grid(flat).tv(1.0, 1.0)) < 1e-12  # constant grid: no variation


def test_adam_step_projects_and_clears(rng):
    values = random_values(rng) * 0.1
    grid = DenseGrid(N, BOX, values)
    grads = rng.standard_normal(values.shape)
    grid.grads.from_numpy(grads)
    grid.step(lr_density=0.5, lr_colour=0.5)
    after = grid.to_numpy()
    assert after[..., 0].min() == 0.0 and after[..., 1:].max() <= 1.0
    moved = np.sign(values - after)[np.abs(after - values) > 0]
    assert np.all(moved == np.sign(grads)[np.abs(after - values) > 0])  # downhill
    assert not grid.gradients().any()


def test_sparse_pruning_and_growth_keep_values(rng):
    values = random_values(rng)
    grid = sparse_grid(values)
    assert grid.set_blocks(np.eye(2, dtype=bool)[:, :, None].repeat(2, 2)) == (0, 4)
    kept = grid.to_numpy()
    added, removed = grid.set_blocks(np.ones((2, 2, 2), bool))
    assert (added, removed) == (4, 0)
    np.testing.assert_array_equal(grid.to_numpy(), kept)  # grown blocks start at 0
    assert grid.memory_bytes() == 8 * BLOCK**3 * 4 * 4 * 8 + 8 * 8


def test_recorded_weights_and_pull_choose_the_blocks():
    """A render records each cell's (dense) or block's (sparse) largest sample weight T·α:
    for an opaque ball the hidden centre and the empty corners weigh nothing. Pruning keeps
    the active blocks seen; growth adds inactive blocks pulled harder than the kept median."""
    from taichi_dr.apps.voxel_fit import GROW_PULL, blocks_covering, next_blocks

    x = (np.arange(N) + 0.5) / N * 2 - 1
    r = np.linalg.norm(np.stack(np.meshgrid(x, x, x, indexing="ij"), -1), axis=-1)
    values = np.full((N, N, N, 4), 0.5)
    values[..., 0] = np.where(r < 0.6, 60.0, 0.0)
    dense = DenseGrid(N, BOX, values)
    cells = dense.block_weights()
    dense.render(rays(), MARCH, cells)
    seen = cells.to_numpy() > 1e-3
    assert seen.any() and not seen[r < 0.2].any() and not seen[r > 1.2].any()
    sparse = sparse_grid(values)
    blocks = sparse.block_weights()
    sparse.render(rays(), MARCH, blocks)
    per_block = cells.to_numpy().reshape(2, BLOCK, 2, BLOCK, 2, BLOCK).max(axis=(1, 3, 5))
    np.testing.assert_allclose(blocks.to_numpy(), per_block, rtol=1e-12)
    np.testing.assert_array_equal(blocks_covering(seen, 16, 2), seen)  # 2³ blocks of 16³
    np.testing.assert_array_equal(blocks_covering(seen, 8, 4), per_block > 1e-3)
    active = np.array([True, True, True, False, False, False])
    seen = np.array([True, True, False, False, True, False])
    pull = np.array([1.0, 3.0, 9.0, 2.0 * GROW_PULL + 0.1, 2.0 * GROW_PULL - 0.1, 0.0])
    expect = [True, True, False, True, False, False]  # median pull of the kept: 2
    np.testing.assert_array_equal(next_blocks(active, seen, pull), expect)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DenseGrid(1, BOX), "integer ≥ 2"),
        (lambda: DenseGrid(1024, BOX), "GiB"),
        (lambda: SparseGrid(10, BOX, block=4), "multiple of the block size"),
        (lambda: sparse_grid(np.zeros((N, N, N, 4))).set_blocks(np.ones((3, 3, 3))), "shape"),
        (lambda: DenseGrid(4, (np.zeros(3), np.array([1.0, 2.0, 1.0]))), "cube"),
        (lambda: March(step=0), "positive"),
    ],
)
def test_bad_input_is_a_one_line_error(make, message):
    with pytest.raises(UserError) as info:
        make()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_sparse_capacity_is_enforced():
    grid = sparse_grid(None)
    grid.max_blocks = 5
    try:
        with pytest.raises(UserError, match="may hold 5 blocks but 8 are needed"):
            grid.set_blocks(np.ones((2, 2, 2), bool))
    finally:
        grid.max_blocks = 8


# --------------------------------------------------------------------------- the application


def test_fit_voxels_dense_and_sparse(tmp_path):
    """``taichi-dr fit voxels`` (through the demo) at a tiny size: both storages improve the
    held-out PSNR, outputs and the comparison are written, inactive blocks hold nothing, and
    --resume continues the sparse fit. (Too few iterations here to carve the starting fog:
    pruning itself is tested above and measured at the default size, README.)"""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("fit_voxels", root / "demos/fit_voxels.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = ["--headless", "--grid", "16", "--block", "2", "--resolution", "12", "--views", "6",
            "--iters", "24", "--batch", "512", "--checkpoint-every", "12", "--frame-every", "8",
            "--out", str(tmp_path)]  # fmt: skip
    assert demo.main(argv) == 0
    summary = json.loads((tmp_path / "comparison.json").read_text())
    for storage in ("dense", "sparse"):
        data = json.loads((tmp_path / storage / "metrics.json").read_text())
        psnrs = [r["psnr_held_out"] for r in data["iterations"] if "psnr_held_out" in r]
        assert data["final"]["psnr_held_out"] > psnrs[0] + 3  # from grey fog to a shape
        assert data["final"]["cells_per_side"] == 16
        for name in ("loss.png", "progress.gif", "target.png", "final.png", "grid.npz"):
            assert (tmp_path / storage / name).is_file(), name
    assert summary["sparse"]["blocks"] <= summary["sparse"]["blocks_total"]
    with np.load(tmp_path / "sparse" / "grid.npz") as grid:
        inactive = ~np.kron(grid["active"], np.ones((2, 2, 2), bool))
        assert not grid["values"][inactive].any()
    resumed = [*argv, "--storage", "sparse", "--iters", "30", "--resume"]
    resumed[resumed.index("--out") + 1] = str(tmp_path / "sparse")
    assert demo.main(resumed) == 0
    data = json.loads((tmp_path / "sparse" / "metrics.json").read_text())
    assert [r["iteration"] for r in data["iterations"]][-6:] == list(range(24, 30))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid", "1"], "voxel resolution must be an integer ≥ 2"),
        (["--grid", "1024"], "GiB"),
        (["--grid", "30", "--block", "4"], "must be a multiple of --block"),
        (["--max-blocks", "0"], "--max-blocks must be at least 1"),
        (["--views", "2"], "at least 3 --views"),
    ],
)
def test_fit_voxels_bad_input(capsys, tmp_path, flags, message):
    from taichi_dr.cli import main

    assert main(["fit", "voxels", "--headless", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
