"""Compile once, many views per call, tensors in and out: what the array renderer costs.

    python benchmarks/batch.py [--quick] [--arch cpu] [--threads 1]

1. The first frame of a renderer of a new resolution and mesh in a warm process (the
   kernels are compiled already: nothing compiles again).
2. Process start to first frame (``import``, ``init``, a 256² GGX render), with a cold
   kernel cache (a fresh cache folder) and a warm one (the same folder again).
3. Forward + backward per view for batches of B = 1, 4, 16 views at 256² (icosphere,
   5,120 faces), modes antialias and soft, gradients to the vertex positions; ratio to B = 1.
4. The torch ops (rasterize → interpolate → shade → antialias, autograd) against the
   native renderer doing the same work under ``ti.ad.Tape`` (256², 5,120 faces).

Timings are medians after warm-up; on a shared machine, compare the ratios.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import taichi as ti

import taichi_dr
from taichi_dr import Camera, Renderer, RenderSettings, losses
from taichi_dr.camera import orbit
from taichi_dr.scene import icosphere

CLOCK = [time.perf_counter]  # process_time with --threads 1: steady on a shared machine


def median_ms(fn, repeats: int) -> float:
    fn()
    ti.sync()
    times = []
    for _ in range(repeats):
        start = CLOCK[0]()
        fn()
        ti.sync()
        times.append(CLOCK[0]() - start)
    return 1e3 * statistics.median(times)


def first_frame(args) -> list:
    mesh = icosphere(4)
    warm = Renderer(mesh, Camera.look_at((0, 0.8, 2.9), width=256, height=256))
    warm.render()
    rows = []
    for size, sub in ((200, 3), (384, 5), (97, 2)):
        start = time.perf_counter()
        r = Renderer(icosphere(sub), Camera.look_at((0, 0.8, 2.9), width=size, height=size))
        r.render()
        rows.append((f"{size}², icosphere({sub})", 1e3 * (time.perf_counter() - start)))
    return rows


START = (
    "import time; t = time.perf_counter(); import taichi_dr; from taichi_dr import Camera; "
    "from taichi_dr import Renderer, RenderSettings; "
    "taichi_dr.init('{arch}'); r = Renderer(taichi_dr.icosphere(4), "
    "Camera.look_at((0, 0.8, 2.9), width=256, height=256), RenderSettings('ggx')); "
    "r.render(); print(time.perf_counter() - t)"
)


def process_start(args) -> list:
    with tempfile.TemporaryDirectory() as cache:
        env = {"TI_OFFLINE_CACHE_FILE_PATH": cache}
        rows = []
        for label in ("cold cache", "warm cache"):
            start = time.perf_counter()
            res = subprocess.run(
                [sys.executable, "-c", START.format(arch=args.arch)],
                capture_output=True,
                text=True,
                env={**_environ(), **env},
            )
            total = time.perf_counter() - start
            inner = float(res.stdout.strip().splitlines()[-1])
            rows.append((label, total, inner))
        return rows


def _environ() -> dict:
    import os

    return dict(os.environ)


def batches(args) -> list:
    mesh = icosphere(4)
    rows = []
    loss = losses.loss_array()
    for mode in ("antialias", "soft"):
        base = None
        for B in (1, 4, 16) if not args.quick else (1, 4):
            cams = orbit(B, width=256, height=256)
            r = Renderer(mesh, cams, RenderSettings("lambert", mode=mode, grads="positions"))
            target = np.zeros((B * 256 * 256, 3), dtype=taichi_dr.backend.np_real())

            def step(r=r, target=target):
                r.rasterize()
                with ti.ad.Tape(loss):
                    r.shade()
                    losses.mse_loss(r.image, target, loss)

            ms = median_ms(step, args.repeats) / B
            base = base or ms
            rows.append((mode, B, ms, ms / base))
    return rows


def torch_vs_native(args) -> list:
    import torch

    import taichi_dr.torch as tdr

    mesh = icosphere(4)
    cam = Camera.look_at((0, 0.8, 2.9), width=256, height=256)
    r = Renderer(mesh, cam, RenderSettings("lambert", mode="antialias", grads="positions"))
    r.lights.reset(ambient=0.1, directional=[((0.3, 0.6, 1.0), (0.9, 0.9, 0.9))])
    loss = losses.loss_array()
    target = np.zeros((256 * 256, 3), dtype=taichi_dr.backend.np_real())

    def native():
        r.rasterize()
        with ti.ad.Tape(loss):
            r.shade()
            losses.mse_loss(r.image, target, loss)

    dtype = torch.float64 if taichi_dr.backend.precision() == "f64" else torch.float32
    v = torch.tensor(mesh.vertices, dtype=dtype, requires_grad=True)
    normals = torch.tensor(mesh.normals, dtype=dtype)
    faces = torch.tensor(mesh.faces)
    topo = tdr.topology(faces, mesh.vertices)
    mvp = torch.tensor(cam.mvp, dtype=dtype)
    eye = torch.tensor(cam.eye, dtype=dtype)[None]
    material = tdr.material(base_color=(0.8, 0.8, 0.8)).to(dtype)
    light = tuple(
        t.to(dtype) if t.is_floating_point() else t
        for t in tdr.lights(ambient=0.1, directional=[((0.3, 0.6, 1.0), (0.9, 0.9, 0.9))])
    )
    albedo = torch.ones(1, 256, 256, 3, dtype=dtype)

    def via_torch():
        clip = torch.cat([v, torch.ones_like(v[:, :1])], 1) @ mvp.T
        frags = tdr.rasterize(clip, faces, (256, 256))
        attributes = tdr.interpolate(torch.cat([v, normals], 1), frags, faces)
        position, normal = attributes[..., :3], attributes[..., 3:]
        image = tdr.shade(frags, position, normal, albedo, eye, material, light, "lambert")
        image = tdr.antialias(image, frags, clip, faces, topo)
        image.square().mean().backward()

    t_native = median_ms(native, args.repeats)
    t_torch = median_ms(via_torch, args.repeats)
    return [("native (Renderer, Tape)", t_native, 1.0), ("torch ops", t_torch, t_torch / t_native)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--arch", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, help="CPU threads (1: time CPU time, not wall time)")
    args = p.parse_args(argv)
    taichi_dr.init(args.arch, **({"cpu_max_num_threads": args.threads} if args.threads else {}))
    if args.threads == 1:
        CLOCK[0] = time.process_time
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    print("\n1. first frame of a new renderer in a warm process (ms)")
    for label, ms in first_frame(args):
        print(f"  {label:<24} {ms:8.1f}")
    print("\n2. process start to first frame, 256² GGX (s): whole process | inside Python")
    for label, total, inner in process_start(args):
        print(f"  {label:<24} {total:8.2f} | {inner:6.2f}")
    print("\n3. forward + backward per view, 256², 5,120 faces, grads to positions")
    print(f"  {'mode':<10} {'B':>3} {'ms/view':>9} {'vs B=1':>7}")
    for mode, B, ms, ratio in batches(args):
        print(f"  {mode:<10} {B:>3} {ms:9.2f} {ratio:7.2f}")
    try:
        rows = torch_vs_native(args)
    except ImportError:
        print("\n4. torch ops: PyTorch is not installed")
        return 0
    print("\n4. forward + backward, 256², 5,120 faces, Lambert + antialias (ms, ratio)")
    for label, ms, ratio in rows:
        print(f"  {label:<24} {ms:8.2f} {ratio:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
