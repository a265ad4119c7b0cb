"""Fit a cube's vertex positions and colours to pictures of it: the renderer, a loss and
Adam in a short loop (no runner, no command line framework).

    python demos/fit_cube.py [--iters 300] [--size 64] [--views 6] [--arch cpu] [--out out/fit_cube]

The target is a cube with coloured corners seen by ``--views`` cameras; the start is a
squashed, rotated grey cube. All views render in one batched call; antialiasing gives
the silhouettes their gradients.
"""

import argparse

import numpy as np
import taichi as ti
import trimesh

import taichi_dr
from taichi_dr import Camera, Mesh, Renderer, RenderSettings, io, losses, optim
from taichi_dr.render.vertex import axis_angle


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--arch", default="cpu", help="cpu, cuda, vulkan, metal or gpu")
    p.add_argument("--out", default="out/fit_cube")
    args = p.parse_args(argv)
    taichi_dr.init(args.arch)

    box = trimesh.creation.box()  # 8 corners, 12 faces
    cube = Mesh(box.vertices, box.faces)
    colors = (box.vertices > 0).astype(float)  # a colour per corner
    azimuths = np.linspace(0, 2 * np.pi, args.views, endpoint=False)
    eyes = [3.5 * np.array([np.sin(a), 0.6 * (-1) ** k, np.cos(a)]) for k, a in enumerate(azimuths)]
    cameras = [Camera.look_at(e, width=args.size, height=args.size) for e in eyes]  # up, down
    r = Renderer(cube, cameras, RenderSettings(shading="unlit", mode="antialias"))

    r.set_mesh(cube, colors)  # the target pictures
    target = r.render().image.reshape(-1, 3).copy()

    start = box.vertices @ axis_angle(np.array([0.3, 0.5, 0.0])).T * [1.0, 0.6, 1.2]
    r.set_mesh(Mesh(start, box.faces), np.full((8, 3), 0.5))
    m = r.mesh
    adam = optim.Adam(
        [(m.positions, 0.01), (m.colors, 0.02)], schedule=optim.ExponentialDecay(0.99)
    )
    loss = losses.loss_array()
    for it in range(args.iters):
        r.rasterize()  # visibility, outside the tape
        with ti.ad.Tape(loss=loss):
            r.shade()
            losses.mse_loss(r.image, target, loss)
        adam.step()
        if it % 50 == 0 or it == args.iters - 1:
            error = np.abs(m.positions.to_numpy() - box.vertices).max()
            print(f"iteration {it:4d}: loss {loss[None]:.6f}, worst corner off by {error:.4f}")
    io.save_image(f"{args.out}/fit.png", np.concatenate(list(r.render().image), 1))
    return {"error_start": np.abs(start - box.vertices).max(), "error": error}


if __name__ == "__main__":
    main()
