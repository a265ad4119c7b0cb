"""Soft rasterizer timing: select + forward + backward, float32, cpu (after compile).

    python -m benchmarks.soft [--size 256] [--subdiv 4] [--K 50] [--sigma 1e-4] [--repeat 20]
                              [--camera-grads]

Loss: Σ silhouette + Σ image; gradients to the vertex positions and colours (PyTorch3D's soft
silhouette differentiates the vertices), the gradient fields zeroed explicitly as the
Renderer does (a Tape that clears every gradient field in the program costs ~2 ms more).
``--camera-grads`` adds the camera and pose gradients (the vertex stage's complex-step
Jacobian, ~3 ms). "forward" includes zeroing the gradients. Prints median and min
milliseconds per phase (min: the machine may be shared) and candidate statistics. Reference
point from the task: PyTorch3D's CPU SoftRas takes ~29 s for the same problem.
"""

import argparse
import time

import numpy as np
import taichi as ti

import taichi_dr
from taichi_dr.camera import Camera
from taichi_dr.render.mesh import MeshBuffers
from taichi_dr.render.soft import SoftRasterizer
from taichi_dr.render.vertex import FieldVertexStage


@ti.kernel
def _loss(sil: ti.template(), img: ti.template(), loss: ti.template()):
    for y, x in sil:
        loss[None] += sil[y, x] + img[y, x].sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--subdiv", type=int, default=4)
    ap.add_argument("--K", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=1e-4)
    ap.add_argument("--gamma", type=float, default=1e-4)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--camera-grads", action="store_true")
    args = ap.parse_args(argv)
    taichi_dr.init(arch=args.arch, precision="f32")
    mesh = taichi_dr.icosphere(args.subdiv)
    n = args.size
    cam = Camera.look_at((0.0, 0.0, 3.0), fov=45, width=n, height=n, near=0.5, far=10.0)
    mb = MeshBuffers(mesh.num_vertices, mesh.num_faces)
    mb.upload(mesh, np.random.default_rng(0).random((mesh.num_vertices, 3)))
    vs = FieldVertexStage(mb.max_vertices)
    vs.set_camera(cam)
    soft = SoftRasterizer.for_camera(
        cam, mesh.num_faces, sigma=args.sigma, gamma=args.gamma, K=args.K
    )
    loss = ti.field(ti.f32, shape=(), needs_grad=True)

    def sync():
        ti.sync()
        return time.perf_counter()

    times = {"select": [], "forward": [], "backward": []}
    t_compile = time.perf_counter()
    for it in range(args.repeat + 1):
        t0 = sync()
        vs.forward(mb)
        soft.select(vs.clip, mb.faces, mb.num_faces)
        t1 = sync()
        soft.zero_grad()
        vs.zero_grad()
        mb.zero_grad()
        tape = ti.ad.Tape(loss, clear_gradients=False)
        with tape:
            vs.forward(mb, stop=() if args.camera_grads else (vs.model,))
            soft.forward(vs.clip, mb.faces, mb.colors)
            _loss(soft.silhouette, soft.image, loss)
            t2 = sync()
            tape.eval_on_exit = False
        tape.grad()
        t3 = sync()
        if it == 0:
            print(f"first iteration (compile + run): {t3 - t_compile:.2f} s")
            continue
        for v, dt in zip(times.values(), (t1 - t0, t2 - t1, t3 - t2)):
            v.append(1e3 * dt)
    med = {k: float(np.median(v)) for k, v in times.items()}
    best = {k: float(np.min(v)) for k, v in times.items()}
    grad = mb.positions.grad.to_numpy()
    print(
        f"{n}x{n}, {mesh.num_faces} faces, K={args.K}, sigma={args.sigma:g}, "
        f"gamma={args.gamma:g}, {soft.num_pairs} pairs "
        f"({soft.num_pairs / (n * n):.1f}/pixel, max {soft.count.to_numpy().max()}), "
        f"truncated pixels {soft.truncated}, |grad| finite: {np.isfinite(grad).all()}"
    )
    print("| phase | median ms | min ms |")
    print("|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.1f} | {best[k]:.1f} |")
    print(f"| total | {sum(med.values()):.1f} | {sum(best.values()):.1f} |")


if __name__ == "__main__":
    main()
