"""Smoke simulator benchmark: step times, pressure solvers, checkpointing memory.

    python benchmarks/smoke.py [--quick] [--arch cpu|cuda]

Every case runs in a fresh subprocess (f32) so that its peak resident memory (ru_maxrss) is its
own. That peak includes Python, NumPy and Taichi's runtime (about 113 MB after ``import
taichi; ti.init(arch=ti.cpu)`` on x64, 62 MB of it the pages of Taichi's LLVM library; shown as
"runtime MB", measured before the simulation is built) and the JIT compilation of the kernels
(about 15 MB more when the offline cache is cold). Times exclude compilation (one warm-up
rollout first) and are medians of 3 runs (the machine may be shared). Prints tables.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def _case(spec: dict) -> dict:
    import taichi_dr
    from taichi_dr.sim import Smoke, SmokeConfig

    taichi_dr.init(spec.pop("arch"), "f32")
    kind = spec.pop("kind")
    repeats = spec.pop("repeats", 3)
    rng = np.random.default_rng(0)
    if kind == "solver":
        return _solver_case(spec, rng)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sim = Smoke(SmokeConfig(**spec))
    sim.set_initial(
        rng.random(sim.shape),
        [0.5 * rng.standard_normal(f.shape) for f in sim.init_velocity],
    )
    import taichi as ti

    def fwd_bwd():
        sim.forward()
        sim.out_density.grad.fill(1.0)
        sim.zero_grad()
        sim.backward()

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        ti.sync()
        return time.perf_counter() - t0

    fwd_bwd()  # compile
    ti.sync()
    return {
        "forward_s": float(np.median([timed(sim.forward) for _ in range(repeats)])),
        "forward_backward_s": float(np.median([timed(fwd_bwd) for _ in range(repeats)])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0 / 1024,
        "field_mb": sim.field_bytes() / 2**20,
        "segment": sim.k,
        "max_div": sim.max_divergence(),
    }


def _solver_case(spec, rng):
    """Jacobi vs CG on one random projection: time per iteration, and to a tolerance."""
    import taichi as ti

    from taichi_dr.sim import MacGrid, PressureSolver

    grid = MacGrid(spec["shape"], spec["boundary"])
    tol, cap = spec["tol"], spec["jacobi_cap"]
    b = rng.standard_normal(grid.shape).astype(np.float32)
    b -= b.mean()
    out = {}
    for method in ("jacobi", "cg"):
        it = 50 if method == "jacobi" else 1
        s = PressureSolver(grid, method, iters=it, tol=tol, max_iters=20000)
        s.rhs.from_numpy(b)
        s.forward()  # compile
        ti.sync()
        if method == "cg":
            t0 = time.perf_counter()
            s.forward()
            ti.sync()
            dt = time.perf_counter() - t0
            out["cg_iters"], out["cg_s"] = s.iterations, dt
            out["cg_per_iter_ms"] = 1e3 * dt / max(1, s.iterations)
            out["cg_residual"] = s.residual_of()
        else:
            t0 = time.perf_counter()
            s.forward()
            ti.sync()
            out["jacobi_per_iter_ms"] = 1e3 * (time.perf_counter() - t0) / it
            # to tolerance: restart with more sweeps until the residual is below tol (or cap)
            n, t_tol, tried = it, None, it
            while n <= cap:
                tried = n
                s2 = PressureSolver(grid, "jacobi", iters=n)
                s2.rhs.from_numpy(b)
                s2.forward()
                r = s2.residual_of()
                if r <= tol:
                    t_tol = n * out["jacobi_per_iter_ms"] / 1e3
                    break
                n *= 4
            out["jacobi_iters_to_tol"] = n if t_tol is not None else f">{tried}"
            out["jacobi_s_to_tol"] = t_tol
    return out


def _run(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def _table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def _fmt(x, f="{:.3f}"):
    return f.format(x) if isinstance(x, (int, float)) else str(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    p.add_argument("--arch", default="cpu")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(_case(json.loads(args.case)), default=float))
        return 0
    q = args.quick
    base = dict(arch=args.arch, kind="sim", dt=1.0, solver="jacobi", jacobi_iters=10)

    # DiffTaichi's configuration: 128², 100 steps, 10 Jacobi sweeps, periodic
    n, steps = (32, 10) if q else (128, 100)
    rows = []
    for label, k in (("full tape", steps), ("checkpointed (k=√T)", 0)):
        r = _run(dict(base, shape=(n, n), steps=steps, boundary="periodic", checkpoint=k))
        rows.append(
            [
                label,
                r.get("segment"),
                _fmt(r.get("forward_s")),
                _fmt(r.get("forward_backward_s")),
                _fmt(r.get("peak_rss_mb"), "{:.0f}"),
                _fmt(r.get("rss_before_mb"), "{:.0f}"),
                _fmt(r.get("field_mb"), "{:.1f}"),
                r.get("error", ""),
            ]
        )
    _table(
        f"DiffTaichi configuration: {n}², {steps} steps, 10 Jacobi sweeps, periodic, f32 "
        "(DiffTaichi itself: 0.58 s fwd+bwd, ~370 MB)",
        ["mode", "k", "fwd s", "fwd+bwd s", "peak RSS MB", "runtime MB", "fields MB", ""],
        rows,
    )

    # checkpointing at 1,000 steps
    n, steps = (32, 40) if q else (128, 1000)
    rows = []
    for label, k in (("full tape", steps), ("checkpointed (k=√T)", 0)):
        r = _run(dict(base, shape=(n, n), steps=steps, boundary="closed", checkpoint=k))
        rows.append(
            [
                label,
                r.get("segment"),
                _fmt(r.get("forward_backward_s")),
                _fmt(r.get("peak_rss_mb"), "{:.0f}"),
                _fmt(r.get("field_mb"), "{:.1f}"),
                r.get("error", ""),
            ]
        )
    _table(
        f"{n}², {steps} steps, closed box",
        ["mode", "k", "fwd+bwd s", "peak RSS MB", "fields MB", ""],
        rows,
    )

    # step times
    sizes = (
        [(16, 16), (24, 24), (8, 8, 8)]
        if q
        else [(128, 128), (256, 256), (512, 512), (32, 32, 32), (64, 64, 64)]
    )
    steps = 5 if q else 20
    rows = []
    for shape in sizes:
        r = _run(dict(base, shape=shape, steps=steps, boundary="closed", checkpoint=0))
        rows.append(
            [
                "x".join(map(str, shape)),
                _fmt(1e3 * r.get("forward_s", float("nan")) / steps, "{:.1f}"),
                _fmt(1e3 * r.get("forward_backward_s", float("nan")) / steps, "{:.1f}"),
                _fmt(r.get("peak_rss_mb"), "{:.0f}"),
                r.get("error", ""),
            ]
        )
    _table(
        f"Step time (closed box, 10 Jacobi sweeps, checkpointed, {steps} steps)",
        ["grid", "fwd ms/step", "fwd+bwd ms/step", "peak RSS MB", ""],
        rows,
    )

    # 3D target: 64³, 100 steps
    shape, steps = ((12, 12, 12), 10) if q else ((64, 64, 64), 100)
    r = _run(dict(base, shape=shape, steps=steps, boundary="closed", checkpoint=0))
    _table(
        f"3D {shape[0]}³, {steps} steps, checkpointed (target ≤ 10 s, ≤ 1 GB)",
        ["fwd s", "fwd+bwd s", "peak RSS MB", ""],
        [
            [
                _fmt(r.get("forward_s")),
                _fmt(r.get("forward_backward_s")),
                _fmt(r.get("peak_rss_mb"), "{:.0f}"),
                r.get("error", ""),
            ]
        ],
    )

    # pressure solvers
    rows = []
    for n in [16, 32] if q else [128, 256]:
        r = _run(
            dict(
                arch=args.arch,
                kind="solver",
                shape=(n, n),
                boundary="closed",
                tol=1e-4,
                jacobi_cap=1000 if q else 50000,
            )
        )
        rows.append(
            [
                f"{n}²",
                _fmt(r.get("jacobi_per_iter_ms")),
                r.get("jacobi_iters_to_tol"),
                _fmt(r.get("jacobi_s_to_tol")),
                _fmt(r.get("cg_per_iter_ms")),
                r.get("cg_iters"),
                _fmt(r.get("cg_s")),
                _fmt(r.get("cg_residual"), "{:.1e}"),
                r.get("error", ""),
            ]
        )
    _table(
        "Pressure solve of a random divergence to max|div| ≤ 1e-4 (open box: plain Jacobi "
        "stalls on the checkerboard mode of a closed or periodic one)",
        [
            "grid",
            "jacobi ms/it",
            "jacobi its",
            "jacobi s",
            "cg ms/it",
            "cg its",
            "cg s",
            "cg max|div|",
            "",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
