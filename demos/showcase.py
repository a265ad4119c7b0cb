"""The main demo: render the project's assets through every stage and write the pictures.

    python demos/showcase.py --out out/showcase

Writes ``pipeline.png`` (what each stage produces), ``shading.png`` (the shading models),
``modes.png`` (the four visibility modes: image and ∂image/∂x next to central finite
differences, for a triangle and a sphere moving right) and ``aov.npz``. About a minute on
two CPU cores, most of it compiling kernels.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import taichi_dr
from taichi_dr import Renderer, RenderSettings, io
from taichi_dr.camera import Camera
from taichi_dr.scene import Mesh, blob, icosphere, load_mesh

ASSETS = Path(__file__).resolve().parents[1] / "assets"
LIGHTS = dict(
    ambient=(0.06, 0.06, 0.07),
    directional=[((-0.4, 0.8, 0.6), (0.95, 0.9, 0.85)), ((0.7, -0.1, 0.3), (0.15, 0.2, 0.35))],
    point=[((1.6, 1.4, 1.8), (1.2, 1.2, 1.4))],
)


def false_colour(ids: np.ndarray) -> np.ndarray:
    """A stable random colour per triangle id; black background."""
    rng = np.random.default_rng(7)
    palette = rng.uniform(0.15, 1.0, (int(ids.max()) + 2, 3))
    out = palette[ids + 1]
    out[ids < 0] = 0.0
    return out


def pipeline_figure(out: Path, size: int) -> dict:
    mesh = load_mesh(ASSETS / "textured.obj")
    cam = Camera.look_at((1.6, 1.1, 2.2), (0, 0, 0), (0, 1, 0), 40.0, size, size, 0.5, 10.0)
    r = Renderer(mesh, cam, RenderSettings(shading="blinn-phong", background=(0.02, 0.02, 0.03)))
    r.lights.reset(**LIGHTS)
    r.material.set(base_color=(1.0, 1.0, 1.0), specular=0.4, shininess=40.0)
    res = r.render()
    hard = res.image
    r.configure(mode="antialias")
    aa = r.render().image
    r.configure(mode="soft", shading="blinn-phong", sigma=3e-4, gamma=1e-4)
    soft = r.render()
    r.configure(mode="hard", shading="unlit")
    r.lights.reset(**LIGHTS)
    albedo = r.render().image
    stages = [
        ("rasterize\ntriangle id", false_colour(res.triangle_id)),
        ("interpolate\nbarycentrics", res.barycentric),
        ("interpolate\nuv", np.concatenate([res.uv, np.zeros_like(res.uv[..., :1])], -1)),
        ("texture\n(trilinear mip)", albedo),
        ("shade\nBlinn-Phong", hard),
        ("antialias\n(edge zoom)", None),
        ("soft\nsilhouette", np.repeat(soft.alpha[..., None], 3, -1)),
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(2.3 * len(stages), 2.9))
    ys, xs = np.nonzero(res.mask)
    cy, cx = ys.min() + (ys.max() - ys.min()) // 3, xs.max() - 4
    zoom = slice(max(cy - 12, 0), cy + 12), slice(max(cx - 12, 0), cx + 12)
    for ax, (name, img) in zip(axes, stages):
        if img is None:  # hard | antialiased edge, magnified
            img = np.concatenate([hard[zoom], np.ones((hard[zoom].shape[0], 1, 3)), aa[zoom]], 1)
            ax.imshow(io.to_uint8(img), interpolation="nearest")
        else:
            srgb = name.startswith(("shade", "texture"))
            ax.imshow(io.to_uint8(img, srgb=srgb), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    for a, b in zip(axes[:-1], axes[1:]):
        fig.add_artist(
            matplotlib.patches.ConnectionPatch(
                (1.02, 0.5),
                (-0.02, 0.5),
                "axes fraction",
                "axes fraction",
                axesA=a,
                axesB=b,
                arrowstyle="-|>",
                color="0.4",
                lw=1.2,
            )
        )
    fig.tight_layout()
    io.atomic_write(out / "pipeline.png", lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)
    return {k: v for k, v in res.as_dict().items()}


def shading_figure(out: Path, size: int) -> None:
    mesh = blob(4)
    cam = Camera.look_at((1.5, 1.0, 2.6), (0, 0, 0), (0, 1, 0), 40.0, size, size, 0.5, 10.0)
    r = Renderer(mesh, cam, RenderSettings(background=(0.02, 0.02, 0.03)))
    r.lights.reset(**LIGHTS)
    r.material.set(
        base_color=(0.85, 0.45, 0.25), specular=0.6, shininess=30.0, roughness=0.35, metallic=0.2
    )
    row = []
    for model in ("lambert", "phong", "blinn-phong", "ggx", "normals"):
        r.configure(shading=model)
        row.append(r.render().image)
    io.save_image(out / "shading.png", np.concatenate(row, 1))


def _derivative_images(r: Renderer, h: float):
    """(image, central FD of ∂image/∂x) for an x-translation of the object."""

    def at(dx):
        r.vertex.params.set(pose_translation=(dx, 0.0, 0.0))
        r.rasterize()
        r.shade()
        return r.result().image

    image = at(0.0)
    fd = (at(h) - at(-h)) / (2 * h)
    at(0.0)
    return image, fd


def modes_figure(out: Path, size: int) -> None:
    """Per mode: the image and its derivative w.r.t. the object's x position, by central
    differences with a step of 1/10 pixel (hard and nmr share the hard forward image, so
    their finite differences are zero almost everywhere — the visibility gradient they
    lack, or approximate in the backward pass only)."""
    tri = Mesh(
        np.array([[-0.6, -0.5, 0.0], [0.7, -0.3, 0.0], [-0.1, 0.6, 0.0]]), np.array([[0, 1, 2]])
    )
    scenes = [("triangle", tri), ("sphere", icosphere(3, radius=0.7))]
    rows = []
    for _, mesh in scenes:
        cam = Camera.look_at((0, 0, 3), (0, 0, 0), (0, 1, 0), 40.0, size, size, 0.5, 10.0)
        r = Renderer(mesh, cam, RenderSettings(shading="lambert", background=(0.0, 0.0, 0.0)))
        r.lights.reset(ambient=(0.2, 0.2, 0.2), directional=[((0.3, 0.5, 1.0), (0.8, 0.8, 0.8))])
        pixel = 2 * 3 * np.tan(np.radians(20)) / size  # world units per pixel at the object
        row = []
        for mode in ("hard", "antialias", "soft", "nmr"):
            r.configure(mode=mode, sigma=2e-4)
            image, fd = _derivative_images(r, pixel / 10)
            d = fd.mean(-1)
            d = np.sign(d) * np.sqrt(np.abs(d) / max(np.abs(d).max(), 1e-9))  # red +, blue −
            signed = np.stack([np.clip(d, 0, 1), np.zeros_like(d), np.clip(-d, 0, 1)], -1)
            row += [image, signed]
        rows.append(np.concatenate(row, 1))
    io.save_image(out / "modes.png", np.concatenate(rows, 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/showcase")
    p.add_argument("--arch", default="cpu")
    p.add_argument("--size", type=int, default=160, help="image side in pixels")
    args = p.parse_args(argv)
    taichi_dr.init(args.arch)
    out = Path(args.out)
    start = time.perf_counter()
    aovs = pipeline_figure(out, args.size)
    io.save_npz(out / "aov.npz", **aovs)
    shading_figure(out, args.size)
    modes_figure(out, max(args.size // 2, 32))
    print(
        f"wrote {out}/pipeline.png, shading.png, modes.png, aov.npz in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
