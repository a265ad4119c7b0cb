"""Chamfer loss between two point clouds: ours (k-d trees built in Taichi, forward and
forward + backward) against scipy's cKDTree (build + query, the forward alone) and brute-force
pairwise distances in NumPy and PyTorch.

    python benchmarks/chamfer.py [--points 100000] [--precision f32|f64] [--brute-queries N]

Two cases: uniform points in the unit cube (as PyTorch3D's benchmarks) and area-uniform samples
of two nearby surfaces (a sphere and the non-convex blob scaled to its mean radius), the use
case of a Chamfer loss. Times are medians of ``--repeats`` runs after a warm-up (compilation
excluded; ours forward and forward + backward in turn). Brute force is O(N·M): it runs on the
first ``--brute-queries`` rows of each direction and is scaled to the full cloud (its time is
exactly linear in the rows; pass ``--brute-queries`` equal to ``--points`` to run it whole).
Prints a table with ratios.
"""

import argparse
import sys
import time

import numpy as np


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run in turn (a shared machine drifts)."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def surface_samples(mesh, n: int, seed: int) -> np.ndarray:
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    return trimesh.sample.sample_surface(tm, n, seed=seed)[0]


def ours(a: np.ndarray, b: np.ndarray, repeats: int) -> dict:
    import taichi as ti

    from taichi_dr import losses
    from taichi_dr.render import arrays

    clouds = [arrays.from_numpy(p, grad=True) for p in (a, b)]
    loss = losses.loss_array()
    chamfer = losses.ChamferLoss(*clouds)

    def forward():
        loss[None] = 0
        chamfer(loss)
        ti.sync()

    def forward_backward():
        arrays.clear_grads(*clouds)
        with ti.ad.Tape(loss):
            chamfer(loss)
        ti.sync()

    times = interleaved({"forward": forward, "forward_backward": forward_backward}, repeats)
    return {**times, "value": float(loss[None])}


def scipy_forward(a, b, repeats: int, workers: int) -> dict:
    from scipy.spatial import cKDTree

    out = {}

    def run():
        da = cKDTree(b).query(a, workers=workers)[0]
        db = cKDTree(a).query(b, workers=workers)[0]
        out["value"] = 0.5 * (np.mean(da**2) + np.mean(db**2))

    t = interleaved({"forward": run}, repeats)["forward"]
    return {"forward": t, "value": out["value"]}


def brute_numpy(x, y, rows: int) -> float:
    """Σ of the row minima of |x_i − y_j|² over the first ``rows`` rows of x, in blocks."""
    y2 = (y**2).sum(1)
    total = 0.0
    for s in range(0, rows, 512):
        xs = x[s : min(s + 512, rows)]
        d2 = (xs**2).sum(1)[:, None] + y2[None] - 2 * xs @ y.T
        total += np.maximum(d2.min(1), 0).sum()
    return total


def brute_torch(x, y, rows: int) -> float:
    import torch

    x, y = torch.from_numpy(x), torch.from_numpy(y)
    total = 0.0
    for s in range(0, rows, 2048):
        d = torch.cdist(x[s : min(s + 2048, rows)], y, compute_mode="use_mm_for_euclid_dist")
        total += float((d**2).min(1).values.sum())
    return total


def brute(fn, a, b, rows: int) -> float:
    """Seconds for both directions of a brute-force Chamfer forward, scaled to all rows."""
    t0 = time.perf_counter()
    fn(a, b, min(rows, len(a)))
    ta = (time.perf_counter() - t0) * len(a) / min(rows, len(a))
    t0 = time.perf_counter()
    fn(b, a, min(rows, len(b)))
    tb = (time.perf_counter() - t0) * len(b) / min(rows, len(b))
    return ta + tb


def ms(seconds: float) -> int:
    return round(seconds * 1e3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000, help="points per cloud")
    parser.add_argument("--precision", choices=("f32", "f64"), default="f32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--brute-queries", type=int, default=5000, help="rows timed")
    parser.add_argument("--arch", default="cpu")
    args = parser.parse_args(argv)

    import taichi_dr
    from taichi_dr import scene
    from taichi_dr.ad.report import format_table

    taichi_dr.init(args.arch, args.precision)
    n = args.points
    dtype = np.float32 if args.precision == "f32" else np.float64
    for case, (a, b) in clouds(n, scene).items():
        run_case(case, a.astype(dtype), b.astype(dtype), args, format_table)
    return 0


def clouds(n: int, scene) -> dict:
    """Two standard cases: uniform points in the unit cube (as PyTorch3D's benchmarks), and
    surface samples of a sphere and of the blob scaled to the sphere's mean radius."""
    rng = np.random.default_rng(0)
    blob = scene.blob(4, seed=0, amplitude=0.3)
    blob.vertices = blob.vertices / np.linalg.norm(blob.vertices, axis=1).mean()
    return {
        "uniform in the unit cube": (rng.random((n, 3)), rng.random((n, 3))),
        "sphere vs blob surfaces": (
            surface_samples(scene.icosphere(4), n, seed=1),
            surface_samples(blob, n, seed=2),
        ),
    }


def run_case(case, a, b, args, format_table):
    n = len(a)

    mine = ours(a, b, args.repeats)
    sp1 = scipy_forward(a, b, args.repeats, workers=1)
    sp2 = scipy_forward(a, b, args.repeats, workers=-1)
    rel = abs(mine["value"] - sp1["value"]) / sp1["value"]
    t_np = brute(brute_numpy, a, b, args.brute_queries)
    t_torch = brute(brute_torch, a, b, args.brute_queries)
    fb = mine["forward_backward"]
    timed = [
        ("ours: forward (2 builds + 2 queries + loss)", mine["forward"], False),
        ("ours: forward + backward", fb, False),
        ("scipy cKDTree: 2 builds + 2 queries (1 thread)", sp1["forward"], False),
        ("scipy cKDTree, query workers=-1", sp2["forward"], False),
        ("brute force NumPy (blocks of 512)", t_np, True),
        ("brute force PyTorch cdist (blocks of 2048)", t_torch, True),
    ]
    rows = [
        [name, ms(t), fb / t if i >= 2 else None, t / fb if slower else None]
        for i, (name, t, slower) in enumerate(timed)
    ]
    print(
        f"\nChamfer loss, {case}, {n:,} vs {n:,} points ({args.precision}, {args.arch}); "
        f"value {mine['value']:.6g} (scipy {sp1['value']:.6g}, rel. diff {rel:.1e})"
    )
    if args.brute_queries < n:
        print(f"brute force timed on {args.brute_queries:,} rows per direction, scaled to {n:,}")
    print(
        format_table(
            ["", "time [ms]", "ours fwd+bwd / this", "this / ours fwd+bwd"], rows, digits=3
        )
    )


if __name__ == "__main__":
    sys.exit(main())
