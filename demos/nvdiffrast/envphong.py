"""Learn an environment map, through a cube map, from pictures of a shiny sphere.

The sphere reflects its surroundings: each pixel looks the environment up in a cube map
[1, 6, s, s, 3] along the reflected view direction, with trilinear filtering whose level
follows the direction's screen-space derivatives (``interpolate(..., diff_attrs='all')``
of per-vertex reflection vectors gives exactly the 6-channel ``uv_da`` that cube maps
take), plus a diffuse term. The true environment is a procedural sky (blue above, brown
ground below, a sun, a few clouds); the learned one starts grey. Prints the PSNR of
renders from held-out viewpoints; reaches ≥ 45 dB at the defaults (96×96 pixels, 32×32
texels per face, 150 iterations)."""

import sys

import numpy as np
import torch
import util

import taichi_dr.nvdiffrast as dr

FACES = (  # per cube face: the direction of (s, t) ∈ [−1, 1]² (OpenGL's orientation)
    lambda s, t: (np.ones_like(s), -t, -s),
    lambda s, t: (-np.ones_like(s), -t, s),
    lambda s, t: (s, np.ones_like(s), t),
    lambda s, t: (s, -np.ones_like(s), -t),
    lambda s, t: (s, -t, np.ones_like(s)),
    lambda s, t: (-s, -t, -np.ones_like(s)),
)


def sky(size: int, rng) -> np.ndarray:
    """A procedural environment as a cube map (6, size, size, 3)."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    t, s = np.meshgrid(c, c, indexing="ij")  # texel row 0 at t = −1
    faces = []
    sun = np.array([0.4, 0.6, -0.7]) / np.linalg.norm([0.4, 0.6, -0.7])
    clouds = rng.normal(size=(6, 3))
    for face in FACES:
        d = np.stack(face(s, t), -1)
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        up = d[..., 1:2]
        above = np.array([0.25, 0.45, 0.85]) * (1 - up) + np.array([0.05, 0.2, 0.6]) * up
        below = np.array([0.35, 0.25, 0.15]) * (1 + np.minimum(up, 0) * 0.5)
        color = np.where(up > 0, above, below)
        for k in clouds:  # soft white blobs above the horizon
            blob = np.exp(-((d - k / np.linalg.norm(k)) ** 2).sum(-1) / 0.05)[..., None]
            color = color * (1 - 0.6 * blob * (up > 0)) + 0.6 * blob * (up > 0)
        color = color + 2.0 * np.exp(-((d - sun) ** 2).sum(-1) / 0.01)[..., None]
        faces.append(color)
    return np.stack(faces).astype(np.float32)


def main(argv=None):
    p = util.parser(__doc__, iters=150, resolution=96)
    p.add_argument("--env", type=int, default=32, help="texels per cube-face side")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    pos, _, tri = (torch.tensor(a) for a in util.uv_sphere(24, 48))
    normal = pos / pos.norm(dim=1, keepdim=True)
    truth = torch.tensor(sky(args.env, rng))[None]
    env = torch.full_like(truth, 0.5).requires_grad_(True)
    glctx = dr.RasterizeCudaContext()
    proj = torch.tensor(util.projection(fov_x=0.5))
    n = args.resolution
    light = torch.tensor([0.4, 0.6, -0.7])

    def render(cubemap, rotation):
        model_view = torch.tensor(util.translate(0, 0, -3.5)) @ torch.tensor(rotation)
        eye = torch.linalg.inv(model_view)[:3, 3]  # the camera in object space
        view = pos - eye
        view = view / view.norm(dim=1, keepdim=True)
        reflected = view - 2 * (view * normal).sum(1, keepdim=True) * normal
        clip = util.to_clip(pos, proj @ model_view)
        rast, rast_db = dr.rasterize(glctx, clip, tri, resolution=[n, n])
        refl, refl_da = dr.interpolate(
            reflected[None], rast, tri, rast_db=rast_db, diff_attrs="all"
        )
        nrm, _ = dr.interpolate(normal[None], rast, tri)
        specular = dr.texture(
            cubemap, refl, refl_da, filter_mode="linear-mipmap-linear", boundary_mode="cube"
        )
        diffuse = 0.15 * (nrm @ light).clamp(min=0)[..., None]
        color = (0.7 * specular + diffuse) * (rast[..., 3:] > 0)
        return dr.antialias(color, rast, clip, tri)

    held_out = [util.random_rotation(np.random.default_rng(2000 + k)) for k in range(4)]

    @torch.no_grad()
    def test_psnr():
        return float(np.mean([util.psnr(render(env, r), render(truth, r)) for r in held_out]))

    start = test_psnr()
    opt = torch.optim.Adam([env], lr=0.05)
    for it in range(args.iters):
        for group in opt.param_groups:  # down to a tenth
            group["lr"] = 0.05 * 0.1 ** (it / max(args.iters, 1))
        rotation = util.random_rotation(rng)
        with torch.no_grad():
            target = render(truth, rotation)
        loss = ((render(env, rotation) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == args.iters - 1:
            util.log(
                args.quiet,
                f"iter {it:4d}  loss {loss.item():.2e}  held-out PSNR {test_psnr():.2f} dB",
            )
    with torch.no_grad():
        pair = [render(m, held_out[0]) for m in (truth, env)]
        util.save(args.out, "envphong_render.png", torch.cat(pair, 2)[0])
        cross = [torch.cat(list(m[0].clamp(0, 1)), 1) for m in (truth, env)]  # faces side by side
        util.save(args.out, "envphong_cubemap.png", torch.cat(cross, 0).flip(0))
    return {"psnr": test_psnr(), "psnr_start": start}


if __name__ == "__main__":
    sys.exit(0 if main()["psnr"] >= 45 else 1)
