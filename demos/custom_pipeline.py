"""Build the pipeline by hand — rasterize → interpolate → your own shading → antialias —
and differentiate it: the stages are functions over arrays, and any Taichi kernel you
write between them joins the tape.

    python demos/custom_pipeline.py [--size 96] [--arch cpu] [--out out/custom_pipeline]

The shading here is a two-tone "cel" look of our own; the script prints the gradient of a
loss with respect to one vertex and checks it against a central difference.
"""

import argparse
import sys

import numpy as np
import taichi as ti

import taichi_dr
from taichi_dr import Camera, io, losses
from taichi_dr.render import arrays, interpolate, raster, silhouette
from taichi_dr.render.antialias import antialias
from taichi_dr.render.arrays import Int, Vec3
from taichi_dr.render.vertex import VertexStage


@ti.kernel
def cel(normal: Vec3, tri: Int, out: Vec3):
    """Our own shading: warm where the surface faces the light, cool elsewhere, with a
    smooth step between (one flat top-level loop: Taichi differentiates it)."""
    for i in range(out.shape[0]):
        n = normal[i].normalized(1e-12)
        t = ti.math.clamp((n.dot(ti.Vector([0.48, 0.64, 0.6])) - 0.2) * 5.0, 0.0, 1.0)
        s = t * t * (3.0 - 2.0 * t)
        colour = s * ti.Vector([1.0, 0.75, 0.4]) + (1.0 - s) * ti.Vector([0.2, 0.3, 0.6])
        out[i] = ti.select(tri[i] >= 0, colour, 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--arch", default="cpu", help="cpu, cuda, vulkan, metal or gpu")
    p.add_argument("--out", default="out/custom_pipeline")
    args = p.parse_args(argv)
    taichi_dr.init(args.arch, "f64")
    mesh = taichi_dr.blob(2)
    V, n = mesh.num_vertices, args.size * args.size
    frame = arrays.Frame(1, args.size, args.size)
    cam = Camera.look_at((0.4, 0.5, 3.0), width=args.size, height=args.size)

    positions = arrays.from_numpy(mesh.vertices, grad=True)  # the inputs we differentiate
    normals = arrays.from_numpy(mesh.normals, grad=True)
    faces = arrays.from_numpy(mesh.faces, ti.i32)
    ranges = arrays.from_numpy(np.array([[0, mesh.num_faces]]), ti.i32)
    neighbours = arrays.from_numpy(silhouette.edge_neighbours(mesh.vertices, mesh.faces), ti.i32)
    vertex, rasterizer = VertexStage(), raster.Rasterizer()
    vertex.set_cameras([cam])
    bary, depth = arrays.empty(n, 3, grad=True), arrays.empty(n, grad=True)
    normal, color, image = (arrays.empty(n, 3, grad=True) for _ in range(3))
    edges, bits = arrays.empty(2 * n, 3, ti.i32), arrays.empty(mesh.num_faces, dtype=ti.i32)
    target = np.full((n, 3), 0.5)
    loss = losses.loss_array()
    vertex.forward(positions, normals, V)  # visibility: outside the tape
    rasterizer.forward(vertex.clip, faces, ranges, frame, V)
    tri = rasterizer.triangle_id  # per-pixel triangle id, -1 on background
    interpolate.barycentrics(vertex.clip, faces, tri, frame, V, bary, depth)
    silhouette.detect(tri, depth, vertex.clip, faces, neighbours, ranges, frame, bits, edges)

    def render():  # differentiable stages: run them under the tape
        vertex.forward(positions, normals, V)
        interpolate.barycentrics(vertex.clip, faces, tri, frame, V, bary, depth)
        interpolate.interpolate(vertex.normal, faces, tri, bary, frame, V, normal)
        cel(normal, tri, color)
        antialias(color, edges, vertex.clip, frame, image)
        losses.mse_loss(image, target, loss)

    with ti.ad.Tape(loss=loss):
        render()
    k = int(np.argmax(np.abs(positions.grad.to_numpy()).sum(1)))  # the most sensitive vertex
    grad = positions.grad.to_numpy()[k]
    x0, h, fd = positions.to_numpy(), 1e-6, np.zeros(3)
    for c in range(3):  # central differences at fixed visibility
        for sign in (1, -1):
            x = x0.copy()
            x[k, c] += sign * h
            positions.from_numpy(x)
            loss.fill(0)
            render()
            fd[c] += sign * loss[None] / (2 * h)
    positions.from_numpy(x0)
    print(f"vertex {k}: gradient {grad}, central difference {fd}")
    io.save_image(f"{args.out}/image.png", image.to_numpy().reshape(args.size, args.size, 3))
    return 0 if np.allclose(grad, fd, rtol=1e-5, atol=1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
