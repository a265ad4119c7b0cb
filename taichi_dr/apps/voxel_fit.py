"""``taichi-dr fit voxels``: fit a density + colour voxel grid to multi-view images.

Ground truth: the textured asset (``assets/textured.obj``, or ``--target-mesh``) rendered by the
mesh renderer (Lambert shading under fixed lights, white background, 2×2 supersampled) from
``--views`` training cameras on three orbits, and from 6 held-out cameras between them. The grid
starts as faint grey fog at a quarter of ``--grid`` cells per side and doubles twice
(coarse-to-fine: at 20 % and 45 % of the iterations, values resampled); each iteration marches
``--batch`` random training rays (:mod:`taichi_dr.sim.volume`, alpha compositing), adds the
mean squared error and a total-variation term, and takes a projected Adam step (density ≥ 0,
colour in [0, 1]; rates decay ×0.1 over the run).

The coarse levels are dense grids (small; their kernels compile once for every size). At the
last level ``--storage dense`` keeps every cell; ``sparse`` keeps blocks of ``--block``³ cells in
Taichi sparse SNodes (one grid, so its kernels compile once): it starts with the blocks in
which the coarse grid's samples weigh more than PRUNE_WEIGHT, and every 10 % of the iterations
it renders all training rays recording every block's largest sample weight T·α: active blocks
below PRUNE_WEIGHT are pruned (free space, the hidden interior), and inactive blocks into which
the backward passes since the last update pulled more density than GROW_PULL × the median of
the kept blocks are grown (:func:`next_blocks`), so the surface can move. ``both`` (default)
runs dense, then sparse, and compares them.

Writes per storage (under ``--out``/dense and /sparse for ``both``): metrics.json (per
iteration loss, held-out PSNR every 10 iterations, blocks and memory; final PSNR, memory,
time), loss.png, progress.gif (target | current | error of a held-out view), target.png and
final.png (all held-out views) and grid.npz (values; sparse: the active-block mask);
comparison.json for ``both``.
"""

import math
import time
from pathlib import Path

import numpy as np

from .. import backend, io, scene
from ..camera import Camera, orbit_eyes
from ..errors import UserError
from ..sim.volume import ray_table
from ..voxels.grid import DenseGrid, March, SparseGrid, check_resolution, resample
from .inverse import normalise, psnr
from .runner import Runner

ASSET = Path(__file__).resolve().parents[2] / "assets" / "textured.obj"
BOX = (np.full(3, -1.1), np.full(3, 1.1))  # the asset fills [-1, 1]³
RADIUS, FOV = 3.4, 40.0
BACKGROUND = (1.0, 1.0, 1.0)
LEVELS = (0.2, 0.45)  # fractions of the iterations where the grid doubles
LR_DENSITY, LR_COLOUR = 1.0, 0.05  # Adam rates (density: optical depth per unit length)
START_DENSITY, START_COLOUR = 0.3, 0.5
PRUNE_WEIGHT, GROW_PULL = 0.1, 4.0  # see next_blocks
PRUNE_EVERY, EVAL_EVERY = 0.1, 10  # PRUNE_EVERY: a fraction of the iterations
PSNR_GOAL = 26.0
MARCH = March(step=0.5, background=BACKGROUND, min_transmittance=1e-3)
DEFAULTS = {"iters": 600, "resolution": 64, "views": 24}


def add_arguments(group) -> None:
    """The voxel app's own flags (it also reads --iters --resolution --views --target-mesh
    --resume --checkpoint-every --frame-every of ``taichi-dr fit``)."""
    group.add_argument(
        "--storage",
        choices=("dense", "sparse", "both"),
        default="both",
        help="voxels: grid storage (both: dense, then sparse, and compare)",
    )
    group.add_argument("--grid", type=int, default=64, help="voxels: final cells per side")
    group.add_argument("--block", type=int, default=2, help="voxels: sparse block side (cells)")
    group.add_argument("--max-blocks", type=int, help="voxels: sparse block capacity")
    group.add_argument("--batch", type=int, default=8192, help="voxels: rays per iteration")
    group.add_argument("--tv", type=float, default=1e-4, help="voxels: total-variation weight")


def _cameras(count: int, size: int, held_out: bool) -> list:
    """Training cameras on orbits at −15°, 15° and 45° elevation (``count`` in all), or 6
    held-out cameras at 0° and 30°, azimuths half-way between training ones."""
    if held_out:
        rings = [(3, 0.0, 30.0), (3, 30.0, 90.0)]
    else:
        per = [count // 3 + (k < count % 3) for k in range(3)]  # azimuths staggered by ring
        rings = [(n, el, 120.0 * k / n) for k, (n, el) in enumerate(zip(per, (-15, 15, 45)))]
    cams = []
    for n, elevation, azimuth0 in rings:
        for eye in orbit_eyes(n, RADIUS, elevation, azimuth0=azimuth0):
            cams.append(Camera.look_at(eye, (0, 0, 0), (0, 1, 0), FOV, size, size, 0.5, 20.0))
    return cams


def target_mesh(path=None) -> scene.Mesh:
    """The mesh whose renders are the ground truth: ``path`` normalised into the unit ball,
    or the textured asset (regenerated when the checkout's file is absent)."""
    if path is not None:
        return normalise(scene.load_mesh(path))
    return scene.load_mesh(ASSET) if ASSET.is_file() else scene.textured_sphere()


def ground_truth(mesh, cameras) -> np.ndarray:
    """(views, H, W, 3) linear images of ``mesh`` by the mesh renderer (Lambert, two
    directional lights and ambient, white background), supersampled 2×2."""
    from ..render.pipeline import RenderSettings
    from .inverse import supersampled

    settings = RenderSettings(shading="lambert", background=BACKGROUND, grads=("positions",))
    lights = dict(
        ambient=(0.35, 0.35, 0.35),
        directional=[((0.4, 0.8, 0.6), (0.8, 0.8, 0.8)), ((-0.6, -0.2, -0.5), (0.35, 0.35, 0.4))],
    )
    return supersampled(mesh, cameras, settings, lights)


def levels(n: int) -> list:
    """Cells per side of each level: n/4, n/2, n (those of at least 4 cells dividing n)."""
    return [m for m in (n // 4, n // 2) if m >= 4 and n % m == 0] + [n]


def blocks_covering(seen: np.ndarray, n: int, block: int) -> np.ndarray:
    """The (n/block)³ block mask of an n³ sparse grid that covers ``seen``, a cubic boolean
    mask (per cell or per block of some grid) whose side divides n."""
    f, m = n // seen.shape[0], n // block
    fine = seen.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    return fine.reshape(m, block, m, block, m, block).any(axis=(1, 3, 5))


def next_blocks(active, seen, pull) -> np.ndarray:
    """Pruning and growth of a sparse grid's blocks: keep the active blocks that were seen;
    add the inactive blocks whose density pull (recorded by the backward passes since the
    last update) exceeds GROW_PULL × the median pull of the kept blocks."""
    keep = active & seen
    if not keep.any():
        return active
    return keep | (~active & (pull > GROW_PULL * np.median(pull[keep])))


class VoxelFit:
    """One fit (one storage): the grid, the rays and targets, one :meth:`step` per
    iteration; checkpoint state for the runner (:meth:`get` / :meth:`set`)."""

    def __init__(self, storage, args, train, held_out):
        self.storage, self.args = storage, args
        self.rng = np.random.default_rng(args.seed)
        real = backend.np_real()
        (self.train_cams, train_images), (self.held_cams, self.held_images) = train, held_out
        self.rays = ray_table(self.train_cams, *BOX).astype(real)
        self.colours = train_images.reshape(-1, 3).astype(real)
        self.held_rays = ray_table(self.held_cams, *BOX).astype(real)
        self.levels = levels(args.grid)
        self.prune_every = max(1, round(PRUNE_EVERY * args.iters))
        self.grid = self._start_grid(self.levels[0])
        self.peak_memory = self.grid.memory_bytes()
        self.reached_goal = None

    # ---- grid lifecycle ----------------------------------------------------------------
    def _start_grid(self, n):
        values = np.empty((n, n, n, 4))
        values[..., 0], values[..., 1:] = START_DENSITY, START_COLOUR
        return DenseGrid(n, BOX, values)

    def level_at(self, it: int) -> int:
        """Cells per side the grid has at iteration ``it``."""
        starts = [round(f * self.args.iters) for f in LEVELS][: len(self.levels) - 1]
        return self.levels[sum(it >= s for s in starts)]

    def _seen(self) -> np.ndarray:
        """Per block (per cell for dense grids): does any training ray's sample there weigh
        more than PRUNE_WEIGHT?"""
        weights = self.grid.block_weights()
        for s in range(0, len(self.rays), 1 << 16):
            self.grid.render(self.rays[s : s + (1 << 16)], MARCH, weights)
        return weights.to_numpy() > PRUNE_WEIGHT

    def _reshape(self, it: int) -> None:
        """Grow to the level of iteration ``it`` (the last level in ``storage``); a sparse
        grid prunes and grows its blocks every PRUNE_EVERY of the iterations."""
        n = self.level_at(it)
        if n != self.grid.n:
            if self.storage == "sparse" and n == self.levels[-1]:
                values = resample(self.grid.to_numpy(), n)
                active = blocks_covering(self._seen(), n, self.args.block)
                self.grid = SparseGrid(n, BOX, self.args.block, active, values,
                                       self.args.max_blocks)  # fmt: skip
            else:
                self.grid = self.grid.upsampled(n)
        elif isinstance(self.grid, SparseGrid) and it % self.prune_every == 0:
            g = self.grid
            g.set_blocks(next_blocks(g.active, self._seen(), g.pull.to_numpy()))
        self.peak_memory = max(self.peak_memory, self.grid.memory_bytes())

    # ---- one iteration -------------------------------------------------------------------
    def step(self, it: int) -> dict:
        args = self.args
        self._reshape(it)
        pick = self.rng.integers(0, len(self.rays), args.batch)
        rays, target = self.rays[pick], self.colours[pick]
        out = self.grid.render(rays, MARCH)
        residual = out[:, :3] - target
        mse = float(np.mean(residual**2))
        self.grid.backward(rays, MARCH, out, 2.0 * residual / residual.size)
        tv = self.grid.tv(args.tv, args.tv) if args.tv > 0 else 0.0
        decay = 0.1 ** (it / max(args.iters - 1, 1))
        self.grid.step(LR_DENSITY * decay, LR_COLOUR * decay)
        record = {"loss": mse + tv, "mse": mse, "cells_per_side": self.grid.n}
        if isinstance(self.grid, SparseGrid):
            record["blocks"] = self.grid.num_blocks
        record["memory_mb"] = self.grid.memory_bytes() / 2**20
        if it % EVAL_EVERY == 0 or it == args.iters - 1:
            record["psnr_held_out"] = self.held_out_psnr()
            if self.reached_goal is None and record["psnr_held_out"] >= PSNR_GOAL:
                self.reached_goal = it + 1
        return record

    # ---- evaluation and output ----------------------------------------------------------
    def render_views(self, rays, count: int, size: int) -> np.ndarray:
        out = np.concatenate(
            [self.grid.render(rays[s : s + (1 << 16)], MARCH) for s in range(0, len(rays), 1 << 16)]
        )
        return out[:, :3].reshape(count, size, size, 3).astype(np.float64)

    def held_out_images(self) -> np.ndarray:
        return self.render_views(self.held_rays, len(self.held_cams), self.args.resolution)

    def held_out_psnr(self) -> float:
        return psnr(np.clip(self.held_out_images(), 0, 1), self.held_images)

    def panels(self) -> list:
        size = self.args.resolution
        current = self.render_views(self.held_rays[: size * size], 1, size)[0]
        target = self.held_images[0]
        return [target, current, np.abs(current - target)]

    def get(self) -> dict:
        g = self.grid
        state = {"values": g.to_numpy(), "m": g.m.to_numpy(), "v": g.v.to_numpy()}
        state["steps"] = np.array(g.steps)  # Adam's step count
        if isinstance(g, SparseGrid):
            state["active"] = g.active
        return state

    def set(self, state: dict) -> None:
        values = state["values"]
        n = values.shape[0]
        if n not in self.levels or values.shape != (n, n, n, 4):
            raise UserError("checkpoint does not match these settings (--grid or --block differ)")
        if "active" in state:
            args = self.args
            self.grid = SparseGrid(n, BOX, args.block, state["active"], values, args.max_blocks)
        else:
            self.grid = DenseGrid(n, BOX, values)
        self.grid.set_moments(state["m"], state["v"], int(state["steps"]))

    def save(self, out: Path) -> None:
        io.save_image(out / "target.png", np.concatenate(list(self.held_images), axis=1))
        final = np.clip(self.held_out_images(), 0, 1)
        io.save_image(out / "final.png", np.concatenate(list(final), axis=1))
        arrays = {"values": self.grid.to_numpy(), "box": np.stack(BOX)}
        if isinstance(self.grid, SparseGrid):
            arrays["active"] = self.grid.active
        io.save_npz(out / "grid.npz", **arrays)


def check_args(args) -> None:
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("iters", "views", "resolution", "batch", "checkpoint_every", "frame_every"):
        if getattr(args, name) < 1:
            raise UserError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if args.views < 3:
        raise UserError(f"fit voxels needs at least 3 --views (three orbits), got {args.views}")
    if args.resolution > 1024:
        raise UserError(f"--resolution must be at most 1024, got {args.resolution}")
    if not (math.isfinite(args.tv) and args.tv >= 0):
        raise UserError(f"--tv must be a finite weight ≥ 0, got {args.tv}")
    check_resolution(args.grid)
    if args.storage != "dense" and (args.block < 2 or args.grid % args.block):
        raise UserError(
            f"--grid {args.grid} must be a multiple of --block {args.block} (≥ 2) for sparse grids"
        )
    if args.max_blocks is not None and args.max_blocks < 1:
        raise UserError(f"--max-blocks must be at least 1, got {args.max_blocks}")
    if args.target:
        raise UserError("fit voxels renders its own targets; --target/--cameras do not apply")


def run(args) -> int:
    backend.init(args.arch)
    if backend.current_arch() not in ("cpu", "cuda"):
        raise UserError("fit voxels needs --arch cpu or cuda (sparse SNodes, float atomics)")
    check_args(args)
    mesh = target_mesh(args.target_mesh)
    size = args.resolution
    train_cams, held_cams = _cameras(args.views, size, False), _cameras(0, size, True)
    t0 = time.perf_counter()
    train = (train_cams, ground_truth(mesh, train_cams))
    held_out = (held_cams, ground_truth(mesh, held_cams))
    print(f"fit voxels: ground truth rendered in {time.perf_counter() - t0:.1f} s")
    storages = ("dense", "sparse") if args.storage == "both" else (args.storage,)
    results = {}
    for storage in storages:
        out = Path(args.out) / storage if len(storages) > 1 else Path(args.out)
        results[storage] = fit_one(storage, args, train, held_out, out)
    if len(storages) > 1:
        compare(results, Path(args.out))
    return 0


def fit_one(storage, args, train, held_out, out) -> dict:
    fit = VoxelFit(storage, args, train, held_out)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings.update(storage=storage, levels=fit.levels, lr=(LR_DENSITY, LR_COLOUR))
    runner = Runner.from_args(args, f"fit-voxels-{storage}", settings,
                              key_metric="psnr_held_out", out_dir=out)  # fmt: skip
    runner.run(fit.step, args.iters, state=fit, panels=fit.panels)
    final = {
        "psnr_held_out": fit.held_out_psnr(),
        "memory_mb": fit.grid.memory_bytes() / 2**20,
        "peak_memory_mb": fit.peak_memory / 2**20,
        "cells_per_side": fit.grid.n,
        "fit_time_s": runner.wall_time,
        "iterations_to_goal": fit.reached_goal,
        "goal": f"psnr_held_out >= {PSNR_GOAL}",
    }
    if isinstance(fit.grid, SparseGrid):
        final["blocks"] = fit.grid.num_blocks
        final["blocks_total"] = fit.grid.active.size
    runner.finish(final)
    fit.save(runner.out)
    print(
        f"fit voxels ({storage}): held-out PSNR {final['psnr_held_out']:.2f} dB, "
        f"memory {final['memory_mb']:.2f} MB, fit {final['fit_time_s']:.0f} s"
    )
    return final


def compare(results: dict, out: Path) -> None:
    """Print and save the dense/sparse comparison."""
    d, s = results["dense"], results["sparse"]
    summary = {
        "dense": d,
        "sparse": s,
        "psnr_gap_db": d["psnr_held_out"] - s["psnr_held_out"],
        "memory_ratio": s["memory_mb"] / d["memory_mb"],
        "peak_memory_ratio": s["peak_memory_mb"] / d["peak_memory_mb"],
    }
    io.save_json(out / "comparison.json", summary)
    print(f"{'storage':8} {'PSNR dB':>8} {'memory MB':>10} {'peak MB':>8} {'time s':>7}")
    for name, r in (("dense", d), ("sparse", s)):
        print(
            f"{name:8} {r['psnr_held_out']:8.2f} {r['memory_mb']:10.2f} "
            f"{r['peak_memory_mb']:8.2f} {r['fit_time_s']:7.0f}"
        )
    print(
        f"sparse: {summary['psnr_gap_db']:+.2f} dB below dense with "
        f"{100 * summary['memory_ratio']:.1f} % of its memory "
        f"({100 * summary['peak_memory_ratio']:.1f} % at peak)"
    )
