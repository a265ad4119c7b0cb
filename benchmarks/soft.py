"""Soft rasterizer timing: select + forward + backward, float32, cpu (after compile).

    python -m benchmarks.soft [--size 256] [--subdiv 4] [--K 50] [--sigma 1e-4] [--repeat 20]
                              [--views 1] [--threads N]

Loss: Σ silhouette + Σ image; gradients to the clip coordinates and vertex colours
(PyTorch3D's soft silhouette differentiates the vertices), the gradients zeroed explicitly
("forward" includes that). ``soft_select`` + ``soft_blend`` for ``--views`` views of the
same clip coordinates in one call (time per call). Prints median and min milliseconds per
phase (min: the machine may be shared) and candidate statistics. Reference point:
PyTorch3D's CPU SoftRas takes ~29 s for the same problem.

``--threads 1`` runs Taichi on one thread and times CPU time instead of wall time: on a
machine shared with other jobs that compares implementations far more steadily.
"""

import argparse
import time

import numpy as np
import taichi as ti

import taichi_dr
from taichi_dr.camera import Camera
from taichi_dr.render import arrays
from taichi_dr.render.soft_blend import blend
from taichi_dr.render.soft_faces import soft_params
from taichi_dr.render.soft_select import SoftCandidates

PHASES = ("select", "forward", "backward")


@ti.kernel
def _array_loss(sil: arrays.Real, img: arrays.Vec3, loss: ti.types.ndarray()):
    for i in range(sil.shape[0]):
        loss[None] += sil[i] + img[i].sum()


CLOCK = [time.perf_counter]


def sync():
    ti.sync()
    return CLOCK[0]()


def timed(steps: dict, repeat: int) -> dict:
    """Median and min ms per phase of each ``step()`` (returning its phase boundaries)
    over ``repeat`` runs, the steps taking turns (a shared machine's load hits them
    alike)."""
    times = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            times[name].append(1e3 * np.diff(step()))
    return {name: {"median": np.median(t, 0), "min": np.min(t, 0)} for name, t in times.items()}


def array_step(mesh, cam, args, views: int):
    """One iteration of the array operations for ``views`` views of the same clip
    coordinates (instanced: every view draws every face)."""
    n = args.size
    frame = arrays.Frame(views, n, n)
    clip0 = np.c_[mesh.vertices, np.ones(mesh.num_vertices)] @ cam.mvp.T
    clip = arrays.from_numpy(np.tile(clip0, (views, 1)), grad=True)
    rng = np.random.default_rng(0)
    colors = arrays.from_numpy(rng.random((mesh.num_vertices, 3)), grad=True)
    faces = arrays.from_numpy(mesh.faces.astype(np.int32), dtype=ti.i32)
    ranges = arrays.from_numpy(np.array([[0, mesh.num_faces]] * views), dtype=ti.i32)
    params = soft_params(sigma=args.sigma, gamma=args.gamma, near=0.5, far=10.0)
    sil = arrays.empty(frame.pixels, grad=True)
    img = arrays.empty(frame.pixels, 3, grad=True)
    loss = ti.ndarray(ti.f32, shape=(), needs_grad=True)
    cand = SoftCandidates()

    def step():
        t0 = sync()
        cand.select(clip, faces, ranges, frame, params, K=args.K)
        t1 = sync()
        arrays.zero(sil.grad, img.grad, clip.grad, colors.grad)
        tape = ti.ad.Tape(loss, clear_gradients=False)
        with tape:
            blend(cand, clip, colors, params, sil, img)
            _array_loss(sil, img, loss)
            t2 = sync()
            tape.eval_on_exit = False
        tape.grad()
        return t0, t1, t2, sync()

    return step, cand


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--subdiv", type=int, default=4)
    ap.add_argument("--K", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=1e-4)
    ap.add_argument("--gamma", type=float, default=1e-4)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (1: CPU time)")
    args = ap.parse_args(argv)
    threads = {} if args.threads is None else {"cpu_max_num_threads": args.threads}
    taichi_dr.init(arch=args.arch, precision="f32", **threads)
    if args.threads == 1:
        CLOCK[0] = time.process_time
    mesh = taichi_dr.icosphere(args.subdiv)
    n = args.size
    cam = Camera.look_at((0.0, 0.0, 3.0), fov=45, width=n, height=n, near=0.5, far=10.0)
    step, cand = array_step(mesh, cam, args, args.views)
    t = time.perf_counter()
    step()
    print(f"first iteration (compile + run) {time.perf_counter() - t:.2f} s")
    results = timed({"soft": step}, args.repeat)
    count = cand.count.to_numpy()[: cand.frame.pixels]
    print(
        f"{args.views} x {n}x{n}, {mesh.num_faces} faces, K={args.K}, sigma={args.sigma:g}, "
        f"gamma={args.gamma:g}, {cand.num_pairs} pairs "
        f"({cand.num_pairs / (args.views * n * n):.1f}/pixel, max {count.max()}), "
        f"truncated pixels {cand.truncated}"
    )
    print("| phase | " + " | ".join(f"{k} median / min ms" for k in results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for i, phase in enumerate((*PHASES, "total")):
        cells = []
        for r in results.values():
            med, best = (r[s][i] if i < 3 else r[s].sum() for s in ("median", "min"))
            cells.append(f"{med:.1f} / {best:.1f}")
        print(f"| {phase} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
