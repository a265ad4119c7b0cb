"""Soft rasterizer timing: select + forward + backward, float32, cpu (after compile).

    python -m benchmarks.soft [--size 256] [--subdiv 4] [--K 50] [--sigma 1e-4] [--repeat 20]
                              [--views 1] [--camera-grads] [--threads N]

Loss: Σ silhouette + Σ image; gradients to the vertex positions and colours (PyTorch3D's soft
silhouette differentiates the vertices), the gradient fields zeroed explicitly as the
Renderer does (a Tape that clears every gradient field in the program costs ~2 ms more).
``--camera-grads`` adds the camera and pose gradients (the vertex stage's complex-step
Jacobian, ~3 ms). "forward" includes zeroing the gradients. Prints median and min
milliseconds per phase (min: the machine may be shared; the implementations take turns)
and candidate statistics. Reference point from the task: PyTorch3D's CPU SoftRas takes
~29 s for the same problem.

Three columns: the ``SoftRasterizer`` class through the vertex stage (as the Renderer
uses it today); the class alone (gradients to clip coordinates and colours); the array
operations of issue 13 (``soft_select`` + ``soft_blend``, same gradients, ``--views``
views of the same clip coordinates in one call, time per call).

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
from taichi_dr.render.mesh import MeshBuffers
from taichi_dr.render.soft import SoftRasterizer
from taichi_dr.render.vertex import FieldVertexStage

from taichi_dr.render.soft_blend import blend
from taichi_dr.render.soft_faces import soft_params
from taichi_dr.render.soft_select import SoftCandidates
from taichi_dr.render.vertex import VertexStage

PHASES = ("select", "forward", "backward")


@ti.kernel
def _loss(sil: ti.template(), img: ti.template(), loss: ti.template()):
    for y, x in sil:
        loss[None] += sil[y, x] + img[y, x].sum()


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


def class_step(soft, vs, mb, loss, through_vertex: bool, camera_grads: bool):
    """One iteration of the old class: (through the vertex stage, or from fixed clip
    coordinates)."""
    clip = ti.Vector.field(4, ti.f32, shape=mb.max_vertices, needs_grad=True)
    clip.copy_from(vs.clip)

    def step():
        t0 = sync()
        if through_vertex:
            vs.forward(mb)
        c = vs.clip if through_vertex else clip
        soft.select(c, mb.faces, mb.num_faces)
        t1 = sync()
        soft.zero_grad()
        vs.zero_grad()
        mb.zero_grad()
        clip.grad.fill(0)
        tape = ti.ad.Tape(loss, clear_gradients=False)
        with tape:
            if through_vertex:
                vs.forward(mb, stop=() if camera_grads else (vs.model,))
            soft.forward(c, mb.faces, mb.colors)
            _loss(soft.silhouette, soft.image, loss)
            t2 = sync()
            tape.eval_on_exit = False
        tape.grad()
        return t0, t1, t2, sync()

    return step


def array_step(vs, mb, args, views: int):
    """One iteration of the array operations for ``views`` views of the same clip
    coordinates (instanced: every view draws every face)."""
    n = args.size
    frame = arrays.Frame(views, n, n)
    V = mb.num_vertices
    clip = arrays.from_numpy(np.tile(vs.clip.to_numpy()[:V], (views, 1)), grad=True)
    colors = arrays.from_numpy(mb.colors.to_numpy()[:V], grad=True)
    faces = arrays.from_numpy(mb.faces.to_numpy()[: mb.num_faces], dtype=ti.i32)
    ranges = arrays.from_numpy(np.array([[0, mb.num_faces]] * views), dtype=ti.i32)
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
    ap.add_argument("--camera-grads", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (1: CPU time)")
    args = ap.parse_args(argv)
    threads = {} if args.threads is None else {"cpu_max_num_threads": args.threads}
    taichi_dr.init(arch=args.arch, precision="f32", **threads)
    if args.threads == 1:
        CLOCK[0] = time.process_time
    mesh = taichi_dr.icosphere(args.subdiv)
    n = args.size
    cam = Camera.look_at((0.0, 0.0, 3.0), fov=45, width=n, height=n, near=0.5, far=10.0)
    mb = MeshBuffers(mesh.num_vertices, mesh.num_faces)
    mb.upload(mesh, np.random.default_rng(0).random((mesh.num_vertices, 3)))
    vs = FieldVertexStage(mb.max_vertices)
    vs.set_camera(cam)
    vs.forward(mb)
    soft = SoftRasterizer.for_camera(
        cam, mesh.num_faces, sigma=args.sigma, gamma=args.gamma, K=args.K
    )
    loss = ti.field(ti.f32, shape=(), needs_grad=True)
    new_step, cand = array_step(vs, mb, args, args.views)
    steps = {
        "class + vertex stage": class_step(soft, vs, mb, loss, True, args.camera_grads),
        "class": class_step(soft, vs, mb, loss, False, False),
        f"arrays ({args.views} view{'s' * (args.views > 1)})": new_step,
    }
    for name, step in steps.items():
        t = time.perf_counter()
        step()
        print(f"{name}: first iteration (compile + run) {time.perf_counter() - t:.2f} s")
    results = timed(steps, args.repeat)
    print(
        f"{n}x{n}, {mesh.num_faces} faces, K={args.K}, sigma={args.sigma:g}, "
        f"gamma={args.gamma:g}, {soft.num_pairs} pairs "
        f"({soft.num_pairs / (n * n):.1f}/pixel, max {soft.count.to_numpy().max()}), "
        f"truncated pixels {soft.truncated}; arrays: {cand.num_pairs} pairs for "
        f"{args.views} view(s), truncated {cand.truncated}"
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
