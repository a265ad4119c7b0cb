"""Fit a cube's vertex positions and colours to pictures of it with PyTorch: the renderer
as one differentiable torch function, a torch loss and ``torch.optim.Adam``.

    python demos/fit_cube_torch.py [--iters 300] [--size 64] [--views 6] [--arch cpu]

The same fit as demos/fit_cube.py, with the parameters as torch tensors:
``taichi_dr.torch.render(renderer, positions=..., colors=...)`` renders every view of the
renderer in one call and returns a (B, H, W, 3) tensor whose backward pass reaches the
tensors passed in (antialiasing gives the silhouettes their gradients).
"""

import argparse

import numpy as np
import torch
import trimesh

import taichi_dr
import taichi_dr.torch as tdr
from taichi_dr import Camera, Mesh, Renderer, RenderSettings
from taichi_dr.render.vertex import axis_angle


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--arch", default="cpu", help="cpu or cuda (where torch tensors can live)")
    args = p.parse_args(argv)
    taichi_dr.init(args.arch)

    box = trimesh.creation.box()  # 8 corners, 12 faces
    azimuths = np.linspace(0, 2 * np.pi, args.views, endpoint=False)
    eyes = [3.5 * np.array([np.sin(a), 0.6 * (-1) ** k, np.cos(a)]) for k, a in enumerate(azimuths)]
    cameras = [Camera.look_at(e, width=args.size, height=args.size) for e in eyes]  # up, down
    settings = RenderSettings(shading="unlit", mode="antialias")
    r = Renderer(Mesh(box.vertices, box.faces), cameras, settings)

    real = torch.float64 if taichi_dr.backend.precision() == "f64" else torch.float32
    device = "cuda" if args.arch == "cuda" else "cpu"
    corners = torch.tensor(box.vertices, dtype=real, device=device)
    with torch.no_grad():  # the target pictures: a colour per corner
        target = tdr.render(r, positions=corners, colors=(corners > 0).to(real))

    start = box.vertices @ axis_angle(np.array([0.3, 0.5, 0.0])).T * [1.0, 0.6, 1.2]
    positions = torch.tensor(start, dtype=real, device=device, requires_grad=True)
    colors = torch.full((8, 3), 0.5, dtype=real, device=device, requires_grad=True)
    adam = torch.optim.Adam([{"params": [positions], "lr": 0.01}, {"params": [colors], "lr": 0.02}])
    schedule = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.99)
    error = lambda: float((positions.detach() - corners).abs().max())  # noqa: E731
    error_start = error()
    for it in range(args.iters):
        image = tdr.render(r, positions=positions, colors=colors)
        loss = torch.nn.functional.mse_loss(image, target)
        adam.zero_grad()
        loss.backward()
        adam.step()
        schedule.step()
        if it % 50 == 0 or it == args.iters - 1:
            print(f"iteration {it:4d}: loss {loss.item():.6f}, worst corner off by {error():.4f}")
    return {"error_start": error_start, "error": error()}


if __name__ == "__main__":
    main()
