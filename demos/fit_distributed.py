"""Fit one mesh from many views on several processes, with PyTorch's own distributed
data parallelism: the way to use many GPUs or machines.

Every process (rank) renders its share of the views with taichi_dr's torch ops —
rasterize → interpolate the vertex normals → Lambert shading in torch → antialias — and
``DistributedDataParallel`` averages the gradients of the vertex offsets over the ranks,
so every rank takes the same Adam step. CPUs talk over gloo, GPUs over nccl (one process
per GPU: ``CUDA_VISIBLE_DEVICES`` per rank, ``--arch cuda``).

    python demos/fit_distributed.py --procs 2            # spawns 2 processes here
    torchrun --nproc_per_node 2 demos/fit_distributed.py # or any torchrun launch

An icosphere is deformed into a bumpy blob (same topology) seen by ``--views`` cameras.
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import taichi_dr
import taichi_dr.torch as tdr
from taichi_dr import UserError
from taichi_dr.camera import orbit
from taichi_dr.scene import blob, icosphere

LIGHT = torch.tensor([0.4, 0.8, 0.5], dtype=torch.float64)


class Shape(torch.nn.Module):
    """Vertex positions = start + offsets (the parameter); ``forward(views)`` renders the
    views (camera matrices (B, 4, 4)) as Lambert-shaded, antialiased images (B, H, W, 3)."""

    def __init__(self, start, faces, size):
        super().__init__()
        self.register_buffer("start", torch.as_tensor(start))
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.int32))
        self.offsets = torch.nn.Parameter(torch.zeros_like(self.start))
        self.size = size
        self.topology = tdr.topology(self.faces)

    def vertices(self):
        return self.start + self.offsets

    def forward(self, mvp):
        v = self.vertices()
        f = self.faces.long()
        face_normals = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
        normals = torch.zeros_like(v).index_add(
            0, f.reshape(-1), face_normals.repeat_interleave(3, 0)
        )
        normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
        clip = torch.cat([v, torch.ones_like(v[:, :1])], 1) @ mvp.transpose(1, 2)
        frags = tdr.rasterize(clip, self.faces, (self.size, self.size))
        n = tdr.interpolate(normals, frags, self.faces)
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        light = LIGHT.to(n) / LIGHT.norm()
        shade = 0.15 + 0.85 * (n @ light).abs()
        image = (shade * (frags.triangle_id >= 0)).unsqueeze(-1).expand(*shade.shape, 3)
        return tdr.antialias(image.contiguous(), frags, clip, self.faces, self.topology)


def fit(args) -> dict:
    """One rank's fit (``torch.distributed`` must be initialised): returns its final
    loss, its parameter checksum and the loss history."""
    if not dist.is_available() or not dist.is_initialized():
        raise UserError(
            "torch.distributed is not initialised; launch with torchrun or --procs N "
            "(see this file's docstring)"
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    taichi_dr.init(args.arch, precision="f64")
    torch.manual_seed(0)
    target, start = blob(2, amplitude=0.25), icosphere(2)
    cams = orbit(args.views, width=args.size, height=args.size)
    mvp = torch.tensor(np.stack([c.mvp for c in cams]))
    mine = list(range(rank, args.views, world))  # this rank's views
    shape = Shape(start.vertices, start.faces, args.size)
    with torch.no_grad():
        truth = Shape(target.vertices, target.faces, args.size)(mvp[mine])
    model = torch.nn.parallel.DistributedDataParallel(shape)
    adam = torch.optim.Adam(model.parameters(), lr=args.lr)
    history = []
    for _ in range(args.iters):
        adam.zero_grad()
        loss = (model(mvp[mine]) - truth).square().mean()
        loss.backward()  # DDP averages the offsets' gradients over the ranks here
        adam.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        history.append(float(total) / world)
    error = float((shape.vertices().detach() - torch.as_tensor(target.vertices)).norm(dim=1).mean())
    return {
        "rank": rank,
        "loss": history,
        "vertex_error": error,
        "checksum": float(shape.offsets.detach().abs().sum()),
    }


def _worker(rank, world, port, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fit(args)
    finally:
        dist.destroy_process_group()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=2, help="processes to spawn (no torchrun)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--size", type=int, default=48, help="image side in pixels")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--arch", default="cpu")
    p.add_argument("--port", type=int, default=29511)
    args = p.parse_args(argv)
    if args.procs < 1 or args.views < args.procs:
        raise UserError(f"need 1 ≤ --procs ≤ --views, got {args.procs} and {args.views}")
    return args


def run(argv=None) -> list:
    """Spawn ``--procs`` ranks on this machine (or, under torchrun, be one rank); returns
    every rank's result (this rank's only, under torchrun)."""
    args = parse_args(argv)
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group("nccl" if args.arch == "cuda" else "gloo")
        return [fit(args)]
    ctx = torch.multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.start_processes(
            _worker, (args.procs, args.port, args, results), nprocs=args.procs, start_method="spawn"
        )
        return [results[r] for r in range(args.procs)]


def main(argv=None) -> int:
    try:
        results = run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(
            f"rank {r['rank']}: loss {r['loss'][0]:.5f} -> {r['loss'][-1]:.5f}, mean vertex "
            f"error {r['vertex_error']:.4f}, parameter checksum {r['checksum']:.6f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
