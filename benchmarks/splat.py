"""Gaussian splatting: forward and forward+backward time, stage split and peak memory, against
a dense PyTorch implementation of the same model; float32 accuracy against float64.

    python -m benchmarks.splat [--sizes 10000:256x256 112000:648x420 ...] [--repeat 3]
                               [--arch cpu] [--dense-limit 1e9] [--no-accuracy]

Scene: N Gaussians with means uniform in the cube [−1, 1]³ seen from distance 3 (focal
length 1.1 × width, so the cube fills the view), random rotations, scales log-uniform in
[e^−5, e^−3] × √(10⁴ / N) (more Gaussians are smaller, as in trained scenes: about 15
Gaussians per pixel reach α ≥ 1/255 at every N), opacities uniform in [0.05, 1], RGB colours;
one camera, background black. Loss for the backward pass: Σ image · w with a fixed random w
(all parameter groups get gradients: means, quats, scales, opacities, colours, viewmat).

Times are medians over ``--repeat`` runs after a warm-up (compile) run, wall clock, with the
machine's load printed (``uptime``): the machine may be shared. Split: project (+ input
checks), bin (depth sort + tile binning), composite; backward: composite, project.
Peak memory: the largest total of NumPy allocations (``tracemalloc``) during one
forward+backward — every scratch array of the splatter is one on the CPU.

The dense PyTorch reference evaluates every Gaussian at every pixel (chunks of pixels with
activation checkpointing, so its memory stays bounded) with torch's autograd; it runs where
N × pixels ≤ ``--dense-limit`` and is otherwise estimated from its time per (pixel,
Gaussian) pair at the smallest size or ``--dense-per-pair`` (marked "est."). "cpu ms": the
process CPU time of one forward+backward, all threads (less affected by other jobs).

Accuracy (``--no-accuracy`` skips): 2,000 Gaussians at 128² in float32 against the dense
implementation in float64: the fraction of pixel values within 2·10⁻⁴, the largest error,
and per parameter group the largest gradient error relative to that group's largest
float64 gradient.
"""

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

import taichi_dr
from taichi_dr.splat import pipeline, raster

KEYS = ("means", "quats", "scales", "opacities", "colors", "viewmats")
SIZES = ("256x256", "648x420", "1024x1024")


def scene(n: int, width: int, height: int, seed: int = 0, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    shrink = np.sqrt(1e4 / n)
    view = np.eye(4)
    view[2, 3] = 3.0
    f = 1.1 * width
    return {
        "means": rng.uniform(-1, 1, (n, 3)).astype(dtype),
        "quats": rng.standard_normal((n, 4)).astype(dtype),
        "scales": (np.exp(rng.uniform(-5, -3, (n, 3))) * shrink).astype(dtype),
        "opacities": rng.uniform(0.05, 1, n).astype(dtype),
        "colors": rng.uniform(0, 1, (n, 3)).astype(dtype),
        "viewmats": view[None].astype(dtype),
        "Ks": np.array([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], dtype),
    }


# ------------------------------------------------------------------------ dense PyTorch
def dense_render(s: dict, width: int, height: int, chunk: int = 2048):
    """The documented model with every Gaussian at every pixel (torch tensors in ``s``)."""
    R, t = s["viewmats"][0, :3, :3], s["viewmats"][0, :3, 3]
    p = s["means"] @ R.T + t
    keep = p[:, 2] > 0.01
    order = torch.argsort(torch.where(keep, p[:, 2], torch.inf), stable=True)[: int(keep.sum())]
    p = p[order]
    q = torch.nn.functional.normalize(s["quats"][order], dim=1)
    w, x, y, z = q.unbind(1)
    Rq = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).reshape(-1, 3, 3)  # fmt: skip
    M = Rq * s["scales"][order][:, None, :]
    K = s["Ks"][0]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zero = torch.zeros_like(p[:, 0])
    J = torch.stack(
        [fx / p[:, 2], zero, -fx * p[:, 0] / p[:, 2] ** 2,
         zero, fy / p[:, 2], -fy * p[:, 1] / p[:, 2] ** 2], dim=1,
    ).reshape(-1, 2, 3)  # fmt: skip
    A = J @ R @ M
    S2 = A @ A.transpose(1, 2) + 0.3 * torch.eye(2, dtype=A.dtype)
    conic = torch.linalg.inv(S2)
    mean2d = torch.stack([fx * p[:, 0] / p[:, 2] + cx, fy * p[:, 1] / p[:, 2] + cy], dim=1)
    opac, colors = s["opacities"][order], s["colors"][order]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).to(A.dtype) + 0.5

    def block(pix, mean2d, conic, opac, colors):
        d = pix[:, None, :] - mean2d[None]
        sigma = 0.5 * torch.einsum("pni,nij,pnj->pn", d, conic, d)
        alpha = torch.clamp(opac * torch.exp(-sigma), max=0.99)
        valid = (sigma >= 0) & (alpha >= 1 / 255)
        a = torch.where(valid, alpha, torch.zeros_like(alpha))
        T = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1 - a[:, :-1]], 1), 1)
        stop = valid & (T * (1 - a) <= 1e-4)
        live = (torch.cumsum(stop.to(torch.int32), 1) == 0).to(a.dtype)
        weights = a * T * live
        return weights @ colors, 1 - torch.prod(1 - a * live, 1)

    parts = [
        checkpoint(block, pix[i : i + chunk], mean2d, conic, opac, colors, use_reentrant=False)
        for i in range(0, len(pix), chunk)
    ]
    image = torch.cat([c for c, _ in parts]).reshape(height, width, 3)
    alpha = torch.cat([a for _, a in parts]).reshape(height, width)
    return image, alpha


def dense_time(s: dict, width: int, height: int, w: np.ndarray) -> tuple[float, float]:
    t = {k: torch.tensor(s[k], requires_grad=k in KEYS) for k in s}
    start = time.perf_counter()
    with torch.no_grad():
        dense_render(t, width, height)
    fwd = time.perf_counter() - start
    start = time.perf_counter()
    image, _ = dense_render(t, width, height)
    (image * torch.tensor(w[0])).sum().backward()
    return fwd, time.perf_counter() - start


# ------------------------------------------------------------------------ ours
def ours(s: dict, width: int, height: int, w: np.ndarray) -> dict:
    """One forward+backward with the stage split (seconds)."""
    times = {}
    clock = time.perf_counter
    t0 = clock()
    inp = pipeline.check_inputs(*(s[k] for k in (*KEYS, "Ks")), width, height)
    pr = pipeline.project_gaussians(
        inp.means, inp.quats, inp.scales, inp.opacities, inp.viewmats, inp.Ks, width, height,
        0.01, 1e10, 0.3,
    )  # fmt: skip
    t1 = clock()
    feats = inp.colors
    tile_start, ids = raster.bin_tiles(pr["depths"], pr["tiles"], pr["boxes"], 1, len(feats),
                                       width, height)  # fmt: skip
    t2 = clock()
    c = {"tile_start": tile_start, "ids": ids}
    P = width * height
    c["out"] = np.empty(P * 3, feats.dtype)
    c["trans"] = np.empty(P, feats.dtype)
    c["last"] = np.empty(P, np.int32)
    raster.composite_forward(
        tile_start, ids, pr["params"], feats, pr["boxes"], pr["spans"], inp.backgrounds, width,
        height, 3, c["out"], c["trans"], c["last"],
    )  # fmt: skip
    t3 = clock()
    g_params, g_feats, _ = pipeline.composite_grad(
        c, pr["params"], feats, pr["boxes"], pr["spans"], inp.backgrounds, width, height,
        np.ascontiguousarray(w.reshape(-1), feats.dtype), np.zeros(P, feats.dtype),
    )  # fmt: skip
    t4 = clock()
    pipeline.project_gaussians_grad(
        inp.means, inp.quats, inp.scales, inp.viewmats, inp.Ks, 0.3, pr["tiles"], g_params,
        np.zeros(len(feats), feats.dtype),
    )  # fmt: skip
    t5 = clock()
    times.update(project=t1 - t0, bin=t2 - t1, composite=t3 - t2, composite_bwd=t4 - t3,
                 project_bwd=t5 - t4, pairs=len(ids))  # fmt: skip
    return times


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ours_api(s: dict, width: int, height: int, w: np.ndarray) -> tuple[float, float, float]:
    """Forward alone and forward+backward through the public API (wall seconds), and the
    process CPU time of forward+backward (all threads; less sensitive to a shared machine)."""
    start, cpu = time.perf_counter(), _cpu()
    r = taichi_dr.splat.render(*(s[k] for k in (*KEYS, "Ks")), width, height)
    fwd = time.perf_counter() - start
    r.backward(w)
    return fwd, time.perf_counter() - start, _cpu() - cpu


def peak_memory(s: dict, width: int, height: int, w: np.ndarray) -> float:
    tracemalloc.start()
    r = taichi_dr.splat.render(*(s[k] for k in (*KEYS, "Ks")), width, height)
    r.backward(w)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def accuracy() -> None:
    n, size = 2000, 128
    s32 = scene(n, size, size, seed=1)
    w = np.random.default_rng(2).standard_normal((1, size, size, 3))
    r = taichi_dr.splat.render(*(s32[k] for k in (*KEYS, "Ks")), size, size)
    g32 = r.backward(w.astype(np.float32))
    t = {k: torch.tensor(s32[k], dtype=torch.float64, requires_grad=k in KEYS) for k in s32}
    image, _ = dense_render(t, size, size)
    (image * torch.tensor(w[0])).sum().backward()
    err = np.abs(r.colors[0] - image.detach().numpy())
    print(
        f"\naccuracy, {n} Gaussians at {size}², float32 vs float64 dense: "
        f"{100 * (err <= 2e-4).mean():.3f} % of values within 2e-4, max error {err.max():.2e}"
    )
    for k in KEYS:
        ref = t[k].grad.numpy()
        e = np.abs(g32[k] - ref).max() / np.abs(ref).max()
        print(f"  gradient {k:10s} max |error| / max |float64 gradient| = {e:.2e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grid = [f"{n}:{size}" for n in (10000, 100000, 1000000) for size in SIZES]
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=[*grid, "112000:648x420"],
        help="N:WxH configurations (default: the 3 × 3 grid, then 112,000 at 648×420)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--dense-limit", type=float, default=1e9, help="largest N × pixels run dense")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument(
        "--dense-per-pair", type=float, help="seconds per (pixel, Gaussian) of the dense "
        "implementation from an earlier run: estimates instead of running it",
    )  # fmt: skip
    args = ap.parse_args(argv)
    taichi_dr.init(arch=args.arch, precision="f32")
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"load: {os.getloadavg()}, {os.cpu_count()} CPUs, arch {args.arch}, float32")
    print(
        f"{'N':>9} {'size':>10} {'pairs':>9} | {'fwd ms':>8} {'fwd+bwd':>8} {'cpu ms':>7} | "
        f"{'proj':>6} "
        f"{'bin':>6} {'comp':>6} {'comp_b':>6} {'proj_b':>6} | {'peak MB':>7} | "
        f"{'dense fwd+bwd s':>15} {'ratio':>6}",
        flush=True,
    )
    per_pair = args.dense_per_pair
    for cfg in args.sizes:
        n, wh = cfg.split(":")
        n, (width, height) = int(n), (int(v) for v in wh.split("x"))
        s = scene(n, width, height)
        w = np.random.default_rng(1).standard_normal((1, height, width, 3)).astype(np.float32)
        ours_api(s, width, height, w)  # compile
        api = [ours_api(s, width, height, w) for _ in range(args.repeat)]
        split = [ours(s, width, height, w) for _ in range(args.repeat)]
        fwd, total, cpu = (float(np.median([a[i] for a in api])) for i in (0, 1, 2))
        med = {k: float(np.median([t[k] for t in split])) for k in split[0]}
        peak = peak_memory(s, width, height, w)
        if n * width * height <= args.dense_limit:
            dense = dense_time(s, width, height, w)[1]
            per_pair = dense / (n * width * height)
            dense_text = f"{dense:15.2f}"
        elif per_pair is not None:
            dense = per_pair * n * width * height
            dense_text = f"{dense:11.0f} est."
        else:
            dense, dense_text = None, f"{'—':>15}"
        ratio = f"{dense / total:6.0f}" if dense is not None else f"{'—':>6}"
        print(
            f"{n:9d} {width:4d}x{height:<5d} {med['pairs']:9.0f} | {1e3 * fwd:8.1f} "
            f"{1e3 * total:8.1f} {1e3 * cpu:7.1f} | {1e3 * med['project']:6.1f} "
            f"{1e3 * med['bin']:6.1f} "
            f"{1e3 * med['composite']:6.1f} {1e3 * med['composite_bwd']:6.1f} "
            f"{1e3 * med['project_bwd']:6.1f} | {peak:7.1f} | {dense_text} {ratio}",
            flush=True,
        )
    if not args.no_accuracy:
        accuracy()
    print(f"load at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
