"""Speed of ``taichi_dr.nvdiffrast`` on the issue's two targets (and per op).

    python benchmarks/nvdiffrast.py [--arch cpu|cuda] [--repeats 20] [--quick]

1. Per-call overhead: one iteration of the cube fit at 16×16 (demos/nvdiffrast/cube.py:
   the target and the current cube rendered — rasterize, interpolate, antialias — MSE,
   backward to positions and colours; no optimizer step). Target ≤ 3 ms on the CPU.
2. Throughput: rasterize + interpolate (3 channels) + antialias, forward and backward to
   the clip positions and the attributes, at 512×512 with 81,920 faces (an icosphere
   filling most of the image). Target ≤ 60 ms on the CPU.
Medians after a warm-up call, float32; the load average is printed with the numbers.
"""

import argparse
import os
import statistics
import time

import numpy as np
import taichi as ti
import torch

import taichi_dr
import taichi_dr.nvdiffrast as dr
from taichi_dr.scene import icosphere


def median_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        ti.sync()
        t = time.perf_counter()
        fn()
        ti.sync()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def perspective(device) -> torch.Tensor:
    proj = torch.tensor(
        [[2.4, 0, 0, 0], [0, 2.4, 0, 0], [0, 0, -1.02, -0.2], [0, 0, -1, 0]], dtype=torch.float32
    )
    c, s = np.cos(0.5), np.sin(0.5)
    view = torch.tensor(
        [[c, 0, s, 0], [0.2 * s, 0.98, -0.2 * c, 0], [-s, 0.2, c, -3.5], [0, 0, 0, 1]],
        dtype=torch.float32,
    )
    return (proj @ view).to(device)


def cube_iteration(glctx, device):
    pos = torch.tensor(
        [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32
    ).to(device)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tri = torch.tensor(
        [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], dtype=torch.int32
    )
    tri = tri.to(device)
    col = torch.rand(8, 3, device=device)
    mvp = perspective(device)
    pos_opt = (pos * 1.1).requires_grad_(True)
    col_opt = (col * 0.9).requires_grad_(True)

    def render(p, c):
        clip = (torch.cat([p, torch.ones_like(p[:, :1])], 1) @ mvp.T)[None]
        rast, _ = dr.rasterize(glctx, clip, tri, resolution=[16, 16])
        color, _ = dr.interpolate(c[None], rast, tri)
        return dr.antialias(color, rast, clip, tri)

    def step():
        with torch.no_grad():
            target = render(pos, col)
        loss = ((render(pos_opt, col_opt) - target) ** 2).mean()
        loss.backward()

    return step


def big_scene(glctx, device, size: int, subdivisions: int):
    mesh = icosphere(subdivisions)
    hom = torch.tensor(np.c_[mesh.vertices, np.ones(mesh.num_vertices)], dtype=torch.float32)
    clip = (hom.to(device) @ perspective(device).T)[None].requires_grad_(True)
    tri = torch.tensor(mesh.faces, dtype=torch.int32, device=device)
    attr = torch.rand(1, mesh.num_vertices, 3, device=device, requires_grad=True)
    topo = dr.antialias_construct_topology_hash(tri)
    weights = torch.rand(1, size, size, 3, device=device)

    def forward():
        rast, _ = dr.rasterize(glctx, clip, tri, resolution=[size, size])
        color, _ = dr.interpolate(attr, rast, tri)
        return dr.antialias(color, rast, clip, tri, topology_hash=topo)

    def both():
        (forward() * weights).sum().backward()

    def parts():
        rast, _ = dr.rasterize(glctx, clip.detach(), tri, resolution=[size, size])
        color, _ = dr.interpolate(attr.detach(), rast, tri)
        return rast, color

    return mesh.num_faces, forward, both, parts, (clip, tri, attr, topo)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = p.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    taichi_dr.init(args.arch)
    device = torch.device("cuda" if args.arch == "cuda" else "cpu")
    glctx = dr.RasterizeTaichiContext()
    print(f"taichi_dr.nvdiffrast on {args.arch}, float32, load average {os.getloadavg()[0]:.2f}")

    cube = median_ms(cube_iteration(glctx, device), repeats * 10)
    print(f"cube fit iteration, 16x16 (2 renders x 3 ops, fwd + bwd): {cube:.2f} ms (target <= 3)")

    faces, forward, both, parts, (clip, tri, attr, topo) = big_scene(glctx, device, 512, 6)
    fwd = median_ms(forward, repeats)
    total = median_ms(both, repeats)
    rast, color = parts()
    r = median_ms(lambda: dr.rasterize(glctx, clip.detach(), tri, resolution=[512, 512]), repeats)
    i = median_ms(lambda: dr.interpolate(attr.detach(), rast, tri), repeats)
    a = median_ms(
        lambda: dr.antialias(color, rast, clip.detach(), tri, topology_hash=topo), repeats
    )
    print(
        f"512x512, {faces:,} faces: rasterize + interpolate + antialias fwd {fwd:.1f} ms, "
        f"fwd + bwd {total:.1f} ms (target <= 60); forward parts: rasterize {r:.1f}, "
        f"interpolate {i:.1f}, antialias {a:.1f} ms"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return {"cube_ms": cube, "fwd_ms": fwd, "fwd_bwd_ms": total}


if __name__ == "__main__":
    main()
