"""The outlook, measured: do large steps, σ annealing and coarse-to-fine blur help?

    python benchmarks/fit.py [--geometry-res 128] [--pose-res 64] [--starts 20] [--out DIR]

* geometry (soft mode, 8 views): iterations until Chamfer ≤ 1 % of the bbox diagonal and
  silhouette IoU ≥ 0.97 (checked every 10 iterations), with/without large-steps
  preconditioning × with/without σ annealing;
* pose (1 view): success rate (rotation ≤ 1°, translation ≤ 1 %) over ``--starts`` random
  starts 60° and 10 % off, with/without coarse-to-fine image blur.

Prints markdown tables and writes ``fit_outlook.json``. Timings depend on the machine.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from taichi_dr import backend
from taichi_dr.apps import inverse
from taichi_dr.apps.fit import Fit


def _options(**kw):
    return inverse.FitOptions(**{"views": 1, "precondition": True, **kw})


def run_fit(app_name, iters, check_every=1, **kw):
    app = inverse.build(app_name, _options(**kw))
    f = Fit(app.problem, iters)
    t0 = time.perf_counter()
    reached, metrics = None, {}
    for it in range(iters):
        f.step(it)
        if (it + 1) % check_every == 0 or it == iters - 1:
            metrics = app.metrics(f, 0 if app_name == "geometry" else it)
            if inverse.goals_met(app.goals, metrics):
                reached = it + 1
                break
    return reached, metrics, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry-res", type=int, default=128)
    p.add_argument("--geometry-iters", type=int, default=300)
    p.add_argument("--pose-res", type=int, default=64)
    p.add_argument("--pose-iters", type=int, default=150)
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--out", default="out/bench")
    a = p.parse_args(argv)
    backend.init("cpu")
    result = {"geometry": [], "pose": []}
    print(f"geometry, {a.geometry_res}², 8 views, soft mode: iterations to target")
    print("| large steps | σ annealing | iterations to target | Chamfer/diag | IoU | time (s) |")
    print("|---|---|---|---|---|---|")
    for pre in (True, False):
        for anneal in (True, False):
            kw = dict(views=8, mode="soft", precondition=pre, sigma_anneal=anneal)
            it, m, t = run_fit("geometry", a.geometry_iters, 10, resolution=a.geometry_res, **kw)
            row = dict(precondition=pre, sigma_anneal=anneal, iterations=it, time_s=t, **m)
            result["geometry"].append(row)
            shown = it if it else f"> {a.geometry_iters}"
            print(f"| {pre} | {anneal} | {shown} | {m['chamfer_rel']:.4f} | {m['iou']:.4f} "
                  f"| {t:.0f} |", flush=True)  # fmt: skip
    print(f"\npose, {a.pose_res}², 60° and 10 % off, {a.starts} random starts")
    print("| coarse-to-fine | successes | median rotation error (°) | time (s) |")
    print("|---|---|---|---|")
    for c2f in (True, False):
        errs, ok, t_all = [], 0, 0.0
        for seed in range(a.starts):
            it, m, t = run_fit("pose", a.pose_iters, resolution=a.pose_res, seed=seed,
                               start_angle=60.0, coarse_to_fine=c2f)  # fmt: skip
            ok += it is not None
            errs.append(m["rotation_error_deg"])
            t_all += t
        errs.sort()
        row = dict(coarse_to_fine=c2f, successes=ok, starts=a.starts, errors=errs, time_s=t_all)
        result["pose"].append(row)
        print(f"| {c2f} | {ok}/{a.starts} | {errs[len(errs) // 2]:.2f} | {t_all:.0f} |", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_outlook.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
