"""Forward and forward+backward time per visibility mode, peak memory, gradient throughput.

    python benchmarks/backward.py [--arch cpu] [--sizes 256 512] [--subdivisions 3 4 5 6]
                                  [--modes hard antialias nmr soft] [--no-peers] [--quick]
                                  [--threads 1] [--profile]

Scene: an icosphere, Blinn-Phong, one directional light; loss = Σ image · w (random w).
"fwd" is rasterize + shade; "fwd+bwd" adds the reverse pass, per row either to the vertex
positions only (``grads=("positions",)``, what the peers compute) or to every parameter
group (``grads="all"``: positions, colours, UVs, texture, material, lights, camera).
Peers, where installed: Mitsuba 3 (``llvm_ad_rgb``, ``direct_projective``, gradients to
vertex positions) and PyTorch3D (MeshRasterizer + SoftSilhouetteShader, faces_per_pixel =
K); each prints "not installed" otherwise. ``--profile`` (instead of the table): each
kernel of a forward + backward step (gradients to positions) at 512² with 5,120 and 81,920
faces, per mode, with the bytes it moves and the floor they imply (``stages.py``).
"""

import argparse
import resource
import statistics
import sys

import forward
import numpy as np
import stages
import taichi as ti
from forward import EYE, FOV, LIGHT, LIGHT_DIR, _mitsuba_probe, mitsuba_scene

import taichi_dr
from taichi_dr import Renderer, RenderSettings
from taichi_dr.camera import Camera
from taichi_dr.checks import _weighted_sum
from taichi_dr.render import arrays
from taichi_dr.scene import icosphere


def median_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    clock = forward.CLOCK[0]
    times = []
    for _ in range(repeats):
        ti.sync()
        t = clock()
        fn()
        ti.sync()
        times.append(clock() - t)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Ours:
    def __init__(self, size: int, mesh, K: int, sigma: float):
        cam = Camera.look_at(EYE, (0, 0, 0), (0, 1, 0), FOV, size, size, 0.5, 10.0)
        self.r = Renderer(mesh, cam, RenderSettings(faces_per_pixel=K, sigma=sigma))
        self.r.lights.reset(ambient=(0.1, 0.1, 0.1), directional=[(LIGHT_DIR, LIGHT)])
        self.w = arrays.from_numpy(np.random.default_rng(0).uniform(-1, 1, (size * size, 3)))
        self.loss = ti.ndarray(taichi_dr.backend.real(), shape=(), needs_grad=True)

    def forward(self):
        self.r.rasterize()
        self.r.shade()

    def backward(self):
        self.r.rasterize()
        with ti.ad.Tape(self.loss):  # the renderer clears its gradients in each new tape
            self.r.shade()
            _weighted_sum(self.r.image, self.w, self.loss)


class MitsubaProjective:
    """Mitsuba 3 ``direct_projective``: differentiable render + gradients to positions."""

    def __init__(self, size: int, mesh):
        import drjit as dr
        import mitsuba as mi

        mi.set_variant("llvm_ad_rgb")
        self.mi, self.dr = mi, dr
        self.scene = mitsuba_scene(mi, mesh, (size, size), {"type": "direct_projective"})
        self.params = mi.traverse(self.scene)
        self.key = "mesh.vertex_positions"

    def forward(self):
        self.dr.eval(self.mi.render(self.scene, spp=1))
        self.dr.sync_thread()

    def backward(self):
        dr = self.dr
        dr.enable_grad(self.params[self.key])
        self.params.update()
        image = self.mi.render(self.scene, self.params, spp=1)
        dr.backward(dr.mean(image))
        dr.eval(dr.grad(self.params[self.key]))
        dr.sync_thread()
        dr.disable_grad(self.params[self.key])


def pytorch3d_peer(size, mesh, K, sigma):
    try:
        import torch
        from pytorch3d.renderer import (
            FoVPerspectiveCameras,
            MeshRasterizer,
            MeshRenderer,
            RasterizationSettings,
            SoftSilhouetteShader,
            look_at_view_transform,
        )
        from pytorch3d.structures import Meshes
    except ImportError:
        return None
    R, T = look_at_view_transform(eye=[EYE])
    cams = FoVPerspectiveCameras(R=R, T=T, fov=FOV)
    blur = float(np.log(1.0 / 1e-4 - 1.0) * sigma)
    raster = RasterizationSettings(image_size=size, blur_radius=blur, faces_per_pixel=K)
    renderer = MeshRenderer(
        MeshRasterizer(cameras=cams, raster_settings=raster), SoftSilhouetteShader()
    )
    verts = torch.tensor(mesh.vertices, dtype=torch.float32, requires_grad=True)
    faces = torch.tensor(mesh.faces, dtype=torch.int64)

    class Peer:
        def forward(self):
            with torch.no_grad():
                renderer(Meshes([verts], [faces]))

        def backward(self):
            renderer(Meshes([verts], [faces]))[..., 3].mean().backward()

    return Peer()


def profile(args) -> None:
    for mode in args.modes:
        tiny = Ours(8, icosphere(0), args.K, args.sigma)
        tiny.r.configure(mode=mode, grads="positions")
        fixed = median_time(tiny.backward, 10 * args.repeats)
        for sub in (4, 6):
            ours = Ours(512, icosphere(sub), args.K, args.sigma)
            ours.r.configure(mode=mode, grads="positions")
            whole = median_time(ours.backward, args.repeats)
            rows = stages.profile(ours.backward, args.repeats, forward.CLOCK[0])
            faces = ours.r.mesh.num_faces
            print(f"\n{mode} forward + backward at 512², {faces:,} faces, per step (median):")
            stages.print_table(rows, ours.r.frame.pixels, whole, fixed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--subdivisions", type=int, nargs="+", default=[3, 4, 5, 6])
    p.add_argument("--modes", nargs="+", default=["hard", "antialias", "nmr", "soft"])
    p.add_argument("--K", type=int, default=50)
    p.add_argument("--sigma", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--quick", action="store_true", help="256², subdivisions 3-4, 3 repeats")
    p.add_argument("--threads", type=int, help="CPU threads (1: time CPU time, not wall time)")
    p.add_argument("--profile", action="store_true", help="only per-kernel times at 512²")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.subdivisions, args.repeats = [256], [3, 4], 3
    taichi_dr.init(args.arch, "f32", **forward.threads(args.threads))
    taichi_dr.backend.require_autodiff()
    if args.profile:
        profile(args)
        return 0
    mitsuba = "skipped (--no-peers)" if args.no_peers else _mitsuba_probe()
    print(f"Mitsuba 3: {'available' if mitsuba is None else mitsuba}")
    have_p3d = not args.no_peers and pytorch3d_peer(16, icosphere(0), 1, 1e-4) is not None
    print(f"PyTorch3D: {'available' if have_p3d else 'not installed'}")
    print(
        f"{'size':>5} {'faces':>7} {'mode':>10} {'grads':>9} {'fwd ms':>8} {'fwd+bwd ms':>11} "
        f"{'bwd/fwd':>8} {'Mgrad/s':>8} {'peak MB':>8}  peers (fwd+bwd ms, ours/theirs)"
    )
    for size in args.sizes:
        for sub in args.subdivisions:
            mesh = icosphere(sub)
            ours = Ours(size, mesh, args.K, args.sigma)
            peer_text = {}
            if mitsuba is None:
                m = MitsubaProjective(size, mesh)
                peer_text["Mitsuba"] = median_time(m.backward, args.repeats)
            if have_p3d:
                peer_text["PyTorch3D soft"] = median_time(
                    pytorch3d_peer(size, mesh, args.K, args.sigma).backward, args.repeats
                )
            for mode, grads in [(m, g) for m in args.modes for g in ("positions", "all")]:
                ours.r.configure(mode=mode, grads=grads)
                f = median_time(ours.forward, args.repeats)
                b = median_time(ours.backward, args.repeats)
                n_grads = 3 * mesh.num_vertices + 3 * size * size
                peers = "  ".join(
                    f"{k} {v * 1e3:.0f} ({b / v:.2f})"
                    for k, v in peer_text.items()
                    if k == "Mitsuba" or (mode == "soft" and "PyTorch3D" in k)
                )
                print(
                    f"{size:>5} {mesh.num_faces:>7} {mode:>10} {grads:>9} {f * 1e3:>8.1f} "
                    f"{b * 1e3:>11.1f} {b / f:>8.2f} {n_grads / b / 1e6:>8.1f} "
                    f"{peak_rss_mb():>8.0f}  {peers}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
