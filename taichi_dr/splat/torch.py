"""gsplat's ``rasterization`` on taichi_dr's kernels: PyTorch tensors in and out, on any
Taichi backend (CPU tensors with ``arch=cpu``, CUDA tensors with ``arch=cuda``).

Three differentiable stages, each a ``torch.autograd.Function`` whose backward runs only its
own kernels: :func:`project` (means, quats, scales, opacities, viewmats → means2d, conics,
depths, opacities per camera), :func:`spherical_harmonics` (view directions, coefficients →
colours) and :func:`rasterize` (→ image, alpha). :func:`rasterization` chains them, so
``meta["means2d"]`` is a node of the graph (``retain_grad()`` gives the screen-space
gradient used by densification, as in gsplat). Computation runs in the backend precision
(``taichi_dr.init(precision=...)``); results come back in the inputs' dtype.
"""

import torch

from .. import backend
from ..errors import UserError
from . import pipeline
from . import project as _project

GSPLAT_DEFAULTS = {  # accepted gsplat options and the only values supported here
    "radius_clip": 0.0,
    "sparse_grad": False,
    "absgrad": False,
    "rasterize_mode": "classic",
    "camera_model": "pinhole",
    "covars": None,
    "distributed": False,
}
IGNORED = ("packed", "channel_chunk")  # layout/performance hints of gsplat


def _real():
    return torch.float64 if backend.precision() == "f64" else torch.float32


def _detach(*tensors):
    """Plain tensors for the kernels (Taichi would allocate ``.grad`` of tensors that
    require gradients)."""
    return tuple(t.detach() for t in tensors)


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, settings):
        means, quats, scales, opacities, viewmats, Ks = _detach(
            means, quats, scales, opacities, viewmats, Ks
        )
        width, height, near, far, eps2d = settings
        C, N = viewmats.shape[0], means.shape[0]
        pr = pipeline.project_gaussians(
            means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d
        )
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, pr["tiles"])
        ctx.eps2d = eps2d
        p = pr["params"]
        ctx.mark_non_differentiable(pr["radii"], pr["boxes"], pr["spans"], pr["tiles"])
        return (
            p[:, 0:2].reshape(C, N, 2), p[:, 2:5].reshape(C, N, 3),
            pr["depths"].reshape(C, N), p[:, 5].reshape(C, N), pr["radii"].reshape(C, N, 2),
            pr["boxes"], pr["spans"], pr["tiles"],
        )  # fmt: skip

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, g_opac, *_):
        means, quats, scales, viewmats, Ks, tiles = _detach(*ctx.saved_tensors)
        C, N = viewmats.shape[0], means.shape[0]
        z = torch.zeros((C, N, 1), dtype=means.dtype, device=means.device)
        parts = [
            z.expand(C, N, k) if g is None else g.reshape(C, N, k)
            for g, k in ((g_means2d, 2), (g_conics, 3), (g_opac, 1))
        ]
        g_params = torch.cat(parts, dim=-1).reshape(C * N, 6).contiguous()
        g_depths = torch.zeros_like(z[..., 0]) if g_depths is None else g_depths
        g = pipeline.project_gaussians_grad(
            means, quats, scales, viewmats, Ks, ctx.eps2d, tiles, g_params,
            g_depths.reshape(C * N).contiguous(),
        )  # fmt: skip
        return g["means"], g["quats"], g["scales"], g["opacities"], g["viewmats"], None, None


class _SphericalHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, degree, dirs, coeffs, tiles):
        dirs, coeffs = _detach(dirs, coeffs)
        C, N = dirs.shape[0], dirs.shape[1]
        dirs = dirs.reshape(C * N, 3).contiguous()
        colors = torch.empty((C * N, 3), dtype=dirs.dtype, device=dirs.device)
        _project.sh_forward(coeffs, degree, dirs, tiles, colors)
        ctx.save_for_backward(dirs, coeffs, tiles, colors)
        ctx.degree = degree
        return colors.reshape(C, N, 3)

    @staticmethod
    def backward(ctx, g_colors):
        dirs, coeffs, tiles, colors = _detach(*ctx.saved_tensors)
        g_sh = torch.empty_like(coeffs)
        g_dirs = torch.empty_like(dirs)
        g = g_colors.reshape(dirs.shape[0], 3).contiguous()
        _project.sh_backward(coeffs, ctx.degree, dirs, tiles, colors, g, g_sh, g_dirs)
        return None, g_dirs.reshape(-1, coeffs.shape[0], 3), g_sh, None


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, means2d, conics, feats, opacities, backgrounds, depths, boxes, spans, tiles, size
    ):
        means2d, conics, feats, opacities, backgrounds, depths = _detach(
            means2d, conics, feats, opacities, backgrounds, depths
        )
        width, height = size
        C, N, D = feats.shape
        params = torch.cat([means2d, conics, opacities[..., None]], dim=-1).reshape(C * N, 6)
        params, feats2 = params.contiguous(), feats.reshape(C * N, D).contiguous()
        c = pipeline.composite(
            params, feats2, depths.reshape(C * N).contiguous(), boxes, spans, tiles,
            backgrounds, C, N, width, height,
        )  # fmt: skip
        ctx.save_for_backward(params, feats2, boxes, spans, backgrounds, *c.values())
        ctx.size = size
        ctx.mark_non_differentiable(c["tile_start"], c["ids"])
        image = c["out"].reshape(C, height, width, D)
        alphas = (1.0 - c["trans"]).reshape(C, height, width, 1)
        return image, alphas, c["tile_start"], c["ids"]

    @staticmethod
    def backward(ctx, g_image, g_alphas, *_):
        saved = _detach(*ctx.saved_tensors)
        params, feats, boxes, spans, backgrounds, out, trans, last, tile_start, ids = saved
        width, height = ctx.size
        c = {"out": out, "trans": trans, "last": last, "tile_start": tile_start, "ids": ids}
        g_image = torch.zeros_like(out) if g_image is None else g_image.reshape(-1)
        g_alphas = torch.zeros_like(trans) if g_alphas is None else g_alphas.reshape(-1)
        g_params, g_feats, g_bg = pipeline.composite_grad(
            c, params, feats, boxes, spans, backgrounds, width, height, g_image.contiguous(),
            g_alphas.contiguous(),
        )  # fmt: skip
        C, N = backgrounds.shape[0], params.shape[0] // backgrounds.shape[0]
        g_params = g_params.reshape(C, N, 6)
        return (
            g_params[..., 0:2], g_params[..., 2:5], g_feats.reshape(C, N, -1), g_params[..., 5],
            g_bg, None, None, None, None, None,
        )  # fmt: skip


def rasterization(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=0.01,
    far_plane=1e10, eps2d=0.3, sh_degree=None, backgrounds=None, render_mode="RGB",
    tile_size=16, **options,
):  # fmt: skip
    """gsplat's ``rasterization``: returns ``(render_colors (C, H, W, X), render_alphas
    (C, H, W, 1), meta)``. Shapes: means (N, 3), quats (N, 4) wxyz (normalised inside),
    scales (N, 3), opacities (N,), colors (N, D) or (C, N, D), or SH (N, K, 3) with
    ``sh_degree``; viewmats (C, 4, 4) world→camera (OpenCV), Ks (C, 3, 3); backgrounds
    (C, D). ``render_mode``: "RGB", "D" (accumulated depth), "ED" (expected depth = D /
    alpha), "RGB+D", "RGB+ED". Differentiable in means, quats, scales, opacities, colors,
    viewmats and backgrounds (not Ks, like gsplat). gsplat's ``packed`` and
    ``channel_chunk`` are accepted and ignored; its other options only at their defaults.
    ``meta`` holds gsplat's keys (``isect_ids`` excepted): radii, means2d, depths, conics,
    opacities, tiles_per_gauss, isect_offsets (C, tile_height, tile_width), flatten_ids,
    tile_width, tile_height, width, height, tile_size, n_cameras."""
    for name, value in options.items():
        if name in IGNORED:
            continue
        if name not in GSPLAT_DEFAULTS:
            raise UserError(f"rasterization() got an unknown option {name!r}")
        if value != GSPLAT_DEFAULTS[name] or (value is None) != (GSPLAT_DEFAULTS[name] is None):
            raise UserError(f"{name}={value!r} is not supported; use {GSPLAT_DEFAULTS[name]!r}")
    if tile_size != _project.TILE:
        raise UserError(f"tile_size must be {_project.TILE}, got {tile_size}")
    tensors = (means, quats, scales, opacities, colors, viewmats, Ks)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise UserError("rasterization() takes torch tensors; use taichi_dr.splat.render for NumPy")
    backend.ensure_init()
    if means.device.type == "cuda" and backend.current_arch() != "cuda":
        raise UserError(
            f"the tensors are on {means.device} but taichi_dr runs on "
            f"{backend.current_arch()}; call taichi_dr.init('cuda') first or move them to the CPU"
        )
    inp = pipeline.check_inputs(
        *(t.detach() for t in tensors), width, height, near_plane, far_plane, eps2d, sh_degree,
        None if backgrounds is None else backgrounds.detach(), render_mode,
    )  # fmt: skip
    real = _real()
    out_dtype = means.dtype
    means, quats, scales, opacities, colors, viewmats, Ks = (t.to(real) for t in tensors)
    C, N, W, H = inp.C, inp.N, inp.width, inp.height
    means2d, conics, depths, opac, radii, boxes, spans, tiles = _Project.apply(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(),
        viewmats.contiguous(), Ks.contiguous(), (W, H, inp.near_plane, inp.far_plane, inp.eps2d),
    )  # fmt: skip
    parts = []
    Dc = inp.color_channels
    if Dc:
        if sh_degree is not None:
            campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])
            dirs = means[None] - campos[:, None]
            parts.append(_SphericalHarmonics.apply(sh_degree, dirs, colors.contiguous(), tiles))
        else:
            parts.append(colors if colors.dim() == 3 else colors[None].expand(C, N, Dc))
    if inp.with_depth:
        parts.append(depths[..., None])
    feats = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    bg = torch.zeros((C, inp.D), dtype=real, device=means.device)
    if backgrounds is not None and Dc:
        bg = torch.cat([backgrounds.to(real), bg[:, Dc:]], dim=-1)
    image, alphas, tile_start, ids = _Rasterize.apply(
        means2d, conics, feats, opac, bg.contiguous(), depths, boxes, spans, tiles, (W, H)
    )
    if render_mode.endswith("ED"):
        image = torch.cat(
            [image[..., :-1], image[..., -1:] / alphas.clamp(min=pipeline.ED_EPS)], dim=-1
        )
    tw, th = -(-W // _project.TILE), -(-H // _project.TILE)
    meta = {
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "tiles_per_gauss": tiles.reshape(C, N),
        "isect_offsets": tile_start[:-1].reshape(C, th, tw),
        "flatten_ids": ids,
        "tile_width": tw,
        "tile_height": th,
        "width": W,
        "height": H,
        "tile_size": _project.TILE,
        "n_cameras": C,
    }
    return image.to(out_dtype), alphas.to(out_dtype), meta


def rasterize_points(points, colors, radii, viewmats, Ks, width, height, opacities=None, **kw):
    """A point cloud as isotropic Gaussians: point n is a Gaussian of standard deviation
    ``radii[n]`` (world units) at ``points[n]`` with opacity ``opacities[n]`` (default 1).
    Differentiable in points, colors, radii, opacities and viewmats; returns
    :func:`rasterization`'s triple (``kw`` are its options)."""
    N = points.shape[0]
    if radii.shape != (N,):
        raise UserError(f"radii must have shape (N,) = ({N},), got {tuple(radii.shape)}")
    quats = torch.zeros((N, 4), dtype=points.dtype, device=points.device)
    quats[:, 0] = 1.0
    if opacities is None:
        opacities = torch.ones(N, dtype=points.dtype, device=points.device)
    scales = radii[:, None].expand(N, 3)
    return rasterization(
        points, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw
    )
