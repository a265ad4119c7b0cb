"""PyTorch ops (optional extra ``torch``): the pipeline's stages as composable autograd
functions on tensors, and the whole renderer as one.

Stage ops — tensors (B, ...) in and out, on their device, without copies (CPU tensors;
CUDA tensors when Taichi runs on cuda, ``taichi_dr.init("cuda")``), each backward running
only its own stage's reverse pass, so your own torch code can sit between any two:

* :func:`rasterize` (clip (B, V, 4), faces) → :class:`Fragments` (triangle ids, and
  barycentrics and depth that carry gradients to the clip coordinates);
* :func:`interpolate` (vertex attributes (V, C) or (B, V, C)) → (B, H, W, C);
* :func:`texture` (an (h, w, 3) image sampled at uv) → (B, H, W, 3);
* :func:`shade` (position, normal, albedo per pixel; packed material and lights, see
  :func:`material` and :func:`lights`) → (B, H, W, 3);
* :func:`antialias` (any image (B, H, W, C) over the fragments) → visibility gradients to
  the clip coordinates at silhouette edges (nvdiffrast-style);
* :func:`soft_rasterize` (clip, faces, vertex colours) → soft image and silhouette.

:func:`render` runs a :class:`~taichi_dr.render.pipeline.Renderer` as one differentiable
function of named tensors (positions, colours, texture, material, lights, pose...).
Gradients are checked with ``torch.autograd.gradcheck`` in float64 (tests/test_torch*).
"""

import warnings
from typing import NamedTuple

import numpy as np
import taichi as ti

from . import backend
from .camera import check_resolution
from .errors import UserError
from .render import arrays, raster, shading, silhouette, soft_blend
from .render import interpolate as interpolation
from .render import texture as texturing
from .render.antialias import antialias as _antialias
from .render.antialias import antialias_backward
from .render.arrays import Frame
from .render.lights import LIGHT_LAYOUT, LIGHTS_SIZE, Lights
from .render.shading import MATERIAL_LAYOUT, MATERIAL_SIZE, MODELS, Material
from .render.soft_faces import SIGMA, soft_params
from .render.soft_select import SoftCandidates
from .render.vertex import VIEW_LAYOUT

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "taichi_dr.torch needs PyTorch; install it with: pip install 'taichi-dr[torch]'"
    ) from e


class Fragments(NamedTuple):
    """What :func:`rasterize` returns, each (B, H, W[, C]), row 0 at the top.

    ``triangle_id`` int32 face index (−1 where empty, no gradient); ``barycentric``
    perspective-correct (0 where empty) and ``depth`` eye-space distance along −z (inf
    where empty), both differentiable in the clip coordinates."""

    triangle_id: "torch.Tensor"
    barycentric: "torch.Tensor"
    depth: "torch.Tensor"


_WARNED: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def _real(t: "torch.Tensor", name: str, finite: bool = True) -> "torch.Tensor":
    """``t`` as a contiguous tensor of the backend's float type (a copy only if needed);
    ``finite``: refuse NaN/inf (scene inputs; per-pixel tensors are not scanned — NaN there
    propagates, as in any torch op)."""
    if not isinstance(t, torch.Tensor):
        raise UserError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtype = torch.float64 if backend.precision() == "f64" else torch.float32
    if not t.is_floating_point():
        raise UserError(f"{name} must be a float tensor, got {t.dtype}")
    if t.is_cuda and backend.current_arch() != "cuda":
        _warn_once(
            "device",
            "taichi_dr runs on the CPU: CUDA tensors are copied to the host and back each "
            "call; start it with taichi_dr.init('cuda') to keep them on the GPU",
        )
    if finite and not torch.isfinite(t).all():
        raise UserError(f"{name} contains NaN or inf; pass finite values")
    return t.to(dtype).contiguous()


def _index(t, name: str, columns: int) -> "torch.Tensor":
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.dim() != 2 or t.shape[1] != columns:
        raise UserError(
            f"{name} must be an integer tensor of shape (n, {columns}), "
            f"got {tuple(t.shape)} {t.dtype}"
        )
    return t.to(torch.int32).contiguous()


def _same_device(*tensors) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise UserError(
            f"all tensors of a call must be on one device, got {sorted(map(str, devices))}"
        )


def _with_grad(t: "torch.Tensor", grad=None) -> "torch.Tensor":
    """A detached copy-free view of ``t`` that Taichi's reverse pass reads or writes
    gradients through: ``grad`` (an output's incoming gradient) or zeros (an input's)."""
    v = t.detach().requires_grad_(True)
    v.grad = torch.zeros_like(v) if grad is None else grad.contiguous()
    return v


_RASTERIZERS: dict = {}


def _rasterizer(device) -> raster.Rasterizer:
    key = (backend.current_arch(), backend.precision(), str(device))
    if key not in _RASTERIZERS:
        _RASTERIZERS.clear()  # Taichi was restarted: earlier buffers are gone
        _RASTERIZERS[key] = raster.Rasterizer()
    return _RASTERIZERS[key]


class _Barycentrics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clip, faces, triangle_id, frame):
        n = frame.pixels
        bary = clip.new_empty((n, 3))
        depth = clip.new_empty(n)
        V = clip.shape[0] // frame.views
        interpolation.barycentrics(clip.detach(), faces, triangle_id, frame, V, bary, depth)
        ctx.save_for_backward(clip, faces, triangle_id)
        ctx.frame = frame
        return bary, depth

    @staticmethod
    def backward(ctx, g_bary, g_depth):
        clip, faces, triangle_id = ctx.saved_tensors
        frame = ctx.frame
        c = _with_grad(clip)
        bary = _with_grad(clip.new_empty((frame.pixels, 3)), g_bary)
        depth = _with_grad(clip.new_empty(frame.pixels), torch.nan_to_num(g_depth, posinf=0.0))
        V = clip.shape[0] // frame.views
        interpolation.barycentrics(c, faces, triangle_id, frame, V, bary, depth, backward=True)
        return c.grad, None, None, None


def rasterize(clip, faces, resolution, ranges=None, cull: str = "none") -> Fragments:
    """Visibility and barycentrics of B views.

    ``clip`` (B, V, 4) or (V, 4) clip-space vertices (OpenGL: x right, y up, the camera
    looking down −z; ``camera.mvp`` maps world points there); ``faces`` (F, 3) integer
    vertex indices, counter-clockwise seen from outside; ``resolution`` (H, W);
    ``ranges`` (B, 2) optional (start, count): view b draws faces start..start+count−1
    (several meshes concatenated in one call) — default: every view draws every face;
    ``cull``: "none", "back", "front". Returns :class:`Fragments` (B, H, W, ...) with
    gradients from ``barycentric`` and ``depth`` to ``clip``."""
    if cull not in ("none", "back", "front"):
        raise UserError(f"unknown cull mode {cull!r}; choose none, back or front")
    clip = _real(clip, "clip")
    if clip.dim() == 2:
        clip = clip[None]
    if clip.dim() != 3 or clip.shape[-1] != 4 or clip.shape[0] == 0:
        raise UserError(
            f"clip must have shape (B, V, 4) or (V, 4) with B ≥ 1, got {tuple(clip.shape)}"
        )
    B, V = clip.shape[:2]
    faces = _index(faces, "faces", 3).to(clip.device)
    if len(faces) and (faces.min() < 0 or faces.max() >= V):
        raise UserError(f"faces index vertices outside 0..{V - 1}")
    H, W = (int(x) for x in resolution)
    check_resolution(W, H)
    F = len(faces)
    if ranges is None:
        ranges = torch.tensor([[0, F]] * B, dtype=torch.int32)
    ranges = _index(ranges, "ranges", 2).to(clip.device)
    if len(ranges) != B:
        raise UserError(
            f"ranges has {len(ranges)} rows for {B} views; give one (start, count) per view"
        )
    if (ranges < 0).any() or (ranges[:, 0] + ranges[:, 1] > F).any():
        raise UserError(f"face ranges must lie within the {F} faces, got {ranges.tolist()}")
    _same_device(clip, faces, ranges)
    frame = Frame(B, H, W)
    flat = clip.reshape(B * V, 4)
    triangle_id = torch.empty(frame.pixels, dtype=torch.int32, device=clip.device)
    _rasterizer(clip.device).forward(
        flat.detach(), faces, ranges, frame, V, cull, triangle_id=triangle_id
    )
    bary, depth = _Barycentrics.apply(flat, faces, triangle_id, frame)
    return Fragments(triangle_id.reshape(B, H, W), bary.reshape(B, H, W, 3), depth.reshape(B, H, W))


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, faces, triangle_id, bary, frame, n_vertices):
        out = values.new_empty((frame.pixels, values.shape[1]))
        interpolation.interpolate(
            values.detach(), faces, triangle_id, bary.detach(), frame, n_vertices, out
        )
        ctx.save_for_backward(values, faces, triangle_id, bary)
        ctx.frame, ctx.n_vertices = frame, n_vertices
        return out

    @staticmethod
    def backward(ctx, g_out):
        values, faces, triangle_id, bary = ctx.saved_tensors
        v, b = _with_grad(values), _with_grad(bary)
        out = _with_grad(values.new_empty((ctx.frame.pixels, values.shape[1])), g_out)
        interpolation.interpolate(
            v, faces, triangle_id, b, ctx.frame, ctx.n_vertices, out, backward=True
        )
        return v.grad, None, None, b.grad, None, None


def interpolate(attributes, fragments: Fragments, faces) -> "torch.Tensor":
    """Per-vertex ``attributes`` (V, C) shared by the views or (B, V, C) per view,
    interpolated perspective-correctly at every pixel of ``fragments``: (B, H, W, C), 0
    where empty; differentiable in ``attributes`` and in the barycentrics (so in the clip
    coordinates)."""
    tri, bary = fragments.triangle_id, fragments.barycentric
    B, H, W = tri.shape
    values = _real(attributes, "attributes")
    if values.dim() == 3:
        if values.shape[0] != B:
            raise UserError(f"attributes have {values.shape[0]} views, the fragments {B}")
        V = values.shape[1]
        values = values.reshape(B * V, -1)
    elif values.dim() == 2:
        V = values.shape[0]
    else:
        raise UserError(
            f"attributes must have shape (V, C) or (B, V, C), got {tuple(values.shape)}"
        )
    faces = _index(faces, "faces", 3).to(values.device)
    _same_device(values, faces, tri)
    frame = Frame(B, H, W)
    out = _Interpolate.apply(
        values, faces, tri.reshape(-1), bary.reshape(-1, 3).to(values.dtype), frame, V
    )
    return out.reshape(B, H, W, -1)


def _per_pixel(t, name: str, frame: Frame, channels: int) -> "torch.Tensor":
    t = _real(t, name, finite=False)
    if tuple(t.shape) != frame.shape(channels):
        raise UserError(f"{name} must have shape {frame.shape(channels)}, got {tuple(t.shape)}")
    return t.reshape(frame.pixels, channels)


def _frame_of(fragments: Fragments) -> Frame:
    if not isinstance(fragments, Fragments):
        raise UserError("pass the Fragments that rasterize() returned")
    return Frame(*fragments.triangle_id.shape)


# --------------------------------------------------------------------------- texture


class _Texture(torch.autograd.Function):
    @staticmethod
    def forward(ctx, texels, uv, footprint, height, width, filter, wrap):
        levels = texturing.mip_levels(height, width, filter)
        level_array = torch.tensor(levels, dtype=torch.int32, device=texels.device)
        size = int(levels[-1, 0] + levels[-1, 1] * levels[-1, 2])
        pyramid = texels.new_empty((size, 3))
        texturing.build_pyramid(texels.detach(), pyramid, levels)
        out = uv.new_empty((uv.shape[0], 3))
        sampler = texturing.Sampler(pyramid, level_array, filter, wrap)
        texturing.lookup(sampler, uv.detach(), footprint.detach(), out)
        ctx.save_for_backward(texels, uv, footprint, pyramid, level_array)
        ctx.levels, ctx.modes = levels, (filter, wrap)
        return out

    @staticmethod
    def backward(ctx, g_out):
        texels, uv, footprint, pyramid, level_array = ctx.saved_tensors
        t, u, f, pyr = (
            _with_grad(texels),
            _with_grad(uv),
            _with_grad(footprint),
            _with_grad(pyramid),
        )
        out = _with_grad(uv.new_empty((uv.shape[0], 3)), g_out)
        texturing.lookup(texturing.Sampler(pyr, level_array, *ctx.modes), u, f, out, backward=True)
        texturing.build_pyramid(t, pyr, ctx.levels, backward=True)
        return t.grad, u.grad, f.grad, None, None, None, None


def texture(image, uv, footprint=None, filter: str = "bilinear", wrap: str = "repeat"):
    """``image`` (h, w, 3) (row 0 at the top; powers of two for "trilinear") sampled at
    ``uv`` (..., 2) (OpenGL: v up) → (..., 3); ``footprint`` (...) = a pixel's size in uv
    units picks the mip level of "trilinear" (e.g. from ``rasterize``'s neighbours; default
    0: level 0). ``filter``: nearest, bilinear, trilinear; ``wrap``: repeat, clamp.
    Differentiable in the image, uv and footprint."""
    img = _real(image, "image")
    if img.dim() != 3 or img.shape[2] != 3:
        raise UserError(f"image must have shape (h, w, 3), got {tuple(img.shape)}")
    h, w = img.shape[:2]
    texturing.check_texture(h, w, filter, wrap)
    uv = _real(uv, "uv", finite=False)
    if uv.shape[-1] != 2:
        raise UserError(f"uv must have shape (..., 2), got {tuple(uv.shape)}")
    lead = uv.shape[:-1]
    fp = (
        torch.zeros(lead, dtype=uv.dtype, device=uv.device)
        if footprint is None
        else _real(footprint, "footprint", finite=False)
    )
    if tuple(fp.shape) != tuple(lead):
        raise UserError(f"footprint must have shape {tuple(lead)}, got {tuple(fp.shape)}")
    _same_device(img, uv, fp)
    out = _Texture.apply(
        img.reshape(h * w, 3), uv.reshape(-1, 2), fp.reshape(-1), h, w, filter, wrap
    )
    return out.reshape(*lead, 3)


# --------------------------------------------------------------------------- shading


def material(**values) -> "torch.Tensor":
    """A packed material tensor (MATERIAL_SIZE,) for :func:`shade` from the names of
    :class:`~taichi_dr.render.shading.Material` (defaults for the rest), float64 or
    float32 as the backend; set ``requires_grad`` on it to differentiate."""
    m = Material(**values)
    return torch.tensor(m.values.to_numpy())


def lights(views: int = 1, **values) -> tuple:
    """Packed lights for :func:`shade`: (values (LIGHTS_SIZE,) or (views, LIGHTS_SIZE),
    counts (2,) or (views, 2) int32), from the keywords of
    :class:`~taichi_dr.render.lights.Lights` (``directional``, ``point``, ``sh``...)."""
    L = Lights(views, **values)
    shape = (LIGHTS_SIZE,) if views == 1 else (views, LIGHTS_SIZE)
    counts = L.counts.to_numpy().reshape(-1, 2)
    return (
        torch.tensor(L.values.to_numpy()).reshape(shape),
        torch.tensor(counts[0] if views == 1 else counts, dtype=torch.int32),
    )


class _Shade(torch.autograd.Function):
    @staticmethod
    def forward(ctx, model, frame, tri, position, normal, albedo, eye, mat, light_values, counts):
        out = position.new_empty((frame.pixels, 3))
        d = [a.detach() for a in (position, normal, albedo, eye, mat, light_values)]
        shading.shade(
            model, frame, tri, d[0], d[1], d[2], None, None, d[3], d[4], d[5], counts, None, out
        )
        ctx.save_for_backward(tri, position, normal, albedo, eye, mat, light_values, counts)
        ctx.model, ctx.frame = model, frame
        return out

    @staticmethod
    def backward(ctx, g_out):
        tri, *inputs, counts = ctx.saved_tensors
        p, n, a, e, m, L = (_with_grad(t) for t in inputs)
        out = _with_grad(p.new_empty((ctx.frame.pixels, 3)), g_out)
        shading.shade(
            ctx.model,
            ctx.frame,
            tri,
            p,
            n,
            a,
            None,
            None,
            e,
            m,
            L,
            counts,
            None,
            out,
            backward=True,
        )
        return (None, None, None, p.grad, n.grad, a.grad, e.grad, m.grad, L.grad, None)


def shade(fragments, position, normal, albedo, eye, material, lights, model="blinn-phong"):
    """Shade every covered pixel of ``fragments`` → (B, H, W, 3) linear radiance (0 where
    empty), with the renderer's models (see ``shading``; two-sided): per pixel world
    ``position``, ``normal`` and ``albedo`` (B, H, W, 3) (e.g. from :func:`interpolate`
    and :func:`texture`), ``eye`` (B, 3) camera positions, ``material`` (MATERIAL_SIZE,)
    from :func:`material` and ``lights`` = (values, counts) from :func:`lights`.
    Differentiable in every float input."""
    if model not in MODELS:
        raise UserError(f"unknown shading {model!r}; choose one of {', '.join(MODELS)}")
    frame = _frame_of(fragments)
    tensors = [
        _per_pixel(t, k, frame, 3)
        for k, t in (("position", position), ("normal", normal), ("albedo", albedo))
    ]
    e = _real(eye, "eye").reshape(-1, 3)
    if len(e) != frame.views:
        raise UserError(f"eye must have shape ({frame.views}, 3), got {tuple(eye.shape)}")
    m = _real(material, "material").reshape(-1)
    if len(m) != MATERIAL_SIZE:
        raise UserError(
            f"material must be a packed ({MATERIAL_SIZE},) tensor: see taichi_dr.torch.material"
        )
    values, counts = lights
    L = _real(values, "lights").reshape(-1)
    if len(L) not in (LIGHTS_SIZE, frame.views * LIGHTS_SIZE):
        raise UserError("lights must be (values, counts) from taichi_dr.torch.lights")
    counts = _index(torch.as_tensor(counts).reshape(-1, 2), "light counts", 2).reshape(-1)
    tri = fragments.triangle_id.reshape(-1)
    _same_device(tri, e, m, L, *tensors)
    out = _Shade.apply(model, frame, tri, *tensors, e, m, L, counts.to(tri.device))
    return out.reshape(frame.shape(3))


# --------------------------------------------------------------------------- antialias


def topology(faces, positions=None) -> "torch.Tensor":
    """The face across each edge (F, 3) int32 (−1 on a boundary), for :func:`antialias`:
    faces that share vertex indices — or, with ``positions`` (V, 3), vertices at the same
    place (meshes with UV seams) — are neighbours. Compute it once per mesh."""
    f = _index(faces, "faces", 3)
    verts = (
        np.arange(int(f.max()) + 1 if len(f) else 0)[:, None]
        if positions is None
        else (torch.as_tensor(positions).detach().cpu().numpy())
    )
    return torch.tensor(silhouette.edge_neighbours(verts, f.cpu().numpy()), dtype=torch.int32)


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, color, clip, edges, frame):
        out = torch.empty_like(color)
        _antialias(color.detach(), edges, clip.detach(), frame, out)
        ctx.save_for_backward(color, clip, edges)
        ctx.frame = frame
        return out

    @staticmethod
    def backward(ctx, g_out):
        color, clip, edges = ctx.saved_tensors
        c, k = _with_grad(color), _with_grad(clip)
        out = _with_grad(torch.empty_like(color), g_out)
        antialias_backward(c, edges, k, ctx.frame, out)
        return c.grad, k.grad, None, None


def antialias(color, fragments: Fragments, clip, faces, topology=None) -> "torch.Tensor":
    """``color`` (B, H, W, C) with the silhouette edges of ``fragments`` blended by their
    coverage (nvdiffrast-style analytic antialiasing): the image barely changes, and its
    gradient reaches the clip coordinates (B, V, 4) of silhouette vertices. ``topology``
    from :func:`topology` (default: computed from ``faces`` by vertex index, each call).
    Use it last: masking or compositing after it drops the visibility gradient."""
    frame = _frame_of(fragments)
    col = _real(color, "color", finite=False)
    if tuple(col.shape[:3]) != frame.shape() or col.dim() != 4:
        raise UserError(f"color must have shape {frame.shape('C')}, got {tuple(col.shape)}")
    C = col.shape[3]
    k = _real(clip, "clip")
    k = k[None] if k.dim() == 2 else k
    if k.dim() != 3 or k.shape[0] != frame.views or k.shape[2] != 4:
        raise UserError(f"clip must have shape ({frame.views}, V, 4), got {tuple(clip.shape)}")
    faces = _index(faces, "faces", 3).to(col.device)
    neighbours = _index(
        topology if topology is not None else globals()["topology"](faces), "topology", 3
    )
    if len(neighbours) != len(faces):
        raise UserError(f"topology has {len(neighbours)} rows for {len(faces)} faces")
    _same_device(col, k, faces, fragments.triangle_id)
    flat = k.reshape(-1, 4)
    n = frame.pixels
    edges = torch.empty((2 * n, 3), dtype=torch.int32, device=col.device)
    bits = torch.empty(frame.views * len(faces), dtype=torch.int32, device=col.device)
    ranges = torch.tensor([[0, len(faces)]] * frame.views, dtype=torch.int32, device=col.device)
    depth = fragments.depth.detach().reshape(-1)  # inf where empty: compared, never used
    silhouette.detect(
        fragments.triangle_id.reshape(-1),
        depth,
        flat.detach(),
        faces,
        neighbours.to(col.device),
        ranges,
        frame,
        bits,
        edges,
    )
    out = _Antialias.apply(col.reshape(n, C), flat, edges, frame)
    return out.reshape(col.shape)


# --------------------------------------------------------------------------- soft


class _Soft(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clip, colors, candidates, params):
        n = candidates.frame.pixels
        sil, image = clip.new_empty(n), clip.new_empty((n, 3))
        soft_blend.blend(candidates, clip.detach(), colors.detach(), params, sil, image)
        ctx.save_for_backward(clip, colors, sil, image)
        ctx.candidates, ctx.params = candidates, params
        return image, sil

    @staticmethod
    def backward(ctx, g_image, g_sil):
        clip, colors, sil, image = ctx.saved_tensors
        g_clip = torch.zeros_like(clip) if ctx.needs_input_grad[0] else None
        g_colors = torch.zeros_like(colors) if ctx.needs_input_grad[1] else None
        soft_blend.blend_backward(
            ctx.candidates, clip.detach(), colors.detach(), ctx.params, sil, image,
            g_sil.contiguous(), g_image.contiguous(), g_clip, g_colors,
        )  # fmt: skip
        return g_clip, g_colors, None, None


def soft_rasterize(
    clip, faces, colors, resolution, sigma=SIGMA, gamma=1e-4, eps=1e-3, faces_per_pixel=50,
    near=0.1, far=100.0, background=(0.0, 0.0, 0.0), ranges=None,
) -> tuple:  # fmt: skip
    """Soft Rasterizer (Liu et al. 2019; see ``soft_blend``) of B views: ``clip`` (B, V, 4)
    or (V, 4), ``faces`` (F, 3), vertex ``colors`` (V, 3) or (B, V, 3) (shade them
    yourself), ``resolution`` (H, W) → (image (B, H, W, 3), silhouette (B, H, W)),
    differentiable in clip and colors. ``near``/``far``: the camera's planes (depths are
    normalised by them); ``faces_per_pixel``: K candidates."""
    k = _real(clip, "clip")
    k = k[None] if k.dim() == 2 else k
    if k.dim() != 3 or k.shape[2] != 4 or k.shape[0] == 0:
        raise UserError(f"clip must have shape (B, V, 4) or (V, 4), got {tuple(clip.shape)}")
    B, V = k.shape[:2]
    col = _real(colors, "colors")
    if col.dim() == 3:
        col = col.reshape(-1, 3)
    if tuple(col.shape) not in ((V, 3), (B * V, 3)):
        raise UserError(
            f"colors must have shape ({V}, 3) or ({B}, {V}, 3), got {tuple(colors.shape)}"
        )
    faces = _index(faces, "faces", 3).to(k.device)
    H, W = (int(x) for x in resolution)
    check_resolution(W, H)
    ranges = torch.tensor([[0, len(faces)]] * B, dtype=torch.int32) if ranges is None else ranges
    ranges = _index(ranges, "ranges", 2).to(k.device)
    _same_device(k, col, faces)
    frame = Frame(B, H, W)
    params = soft_params(sigma, gamma, eps, near=near, far=far, background=background)
    candidates = SoftCandidates()
    flat = k.reshape(-1, 4)
    candidates.select(flat.detach(), faces, ranges, frame, params, faces_per_pixel)
    image, sil = _Soft.apply(flat, col, candidates, params)
    return image.reshape(B, H, W, 3), sil.reshape(B, H, W)


# --------------------------------------------------------------------------- the renderer

PER_VERTEX = ("positions", "normals", "colors", "uvs")
VIEW = VIEW_LAYOUT.names
INPUTS = (*PER_VERTEX, "texture", *MATERIAL_LAYOUT.names, *LIGHT_LAYOUT.names, *VIEW)


def _slot(renderer, name: str) -> tuple:
    """(array, shape of the tensor, packed layout span or None) of input ``name``."""
    r = renderer
    if name in PER_VERTEX:
        a = getattr(r.mesh, name)
        rows = a.shape[0]
        return a, (rows, 2 if name == "uvs" else 3), None
    if name == "texture":
        if r.texture is None:
            raise UserError("the renderer has no texture; give it one (set_texture) first")
        return r.texture.texels, (r.texture.height, r.texture.width, 3), None
    if name in VIEW:
        packed = r.vertex.params
    else:
        packed = r.material if name in MATERIAL_LAYOUT.names else r.lights
    layout = packed.layout
    lead = () if packed.sets == 1 else (packed.sets,)
    return packed.values, lead + layout.shapes[name], (layout, name, packed.sets)


def _write(renderer, name, t) -> None:
    a, shape, packed = _slot(renderer, name)
    value = t.detach().cpu().numpy().astype(backend.np_real())
    if packed is None:
        a.from_numpy(value.reshape(a.to_numpy().shape))
        return
    layout, name, sets = packed
    host = a.to_numpy().reshape(sets, layout.size)
    host[:, layout.span(name)] = value.reshape(sets, -1)
    a.from_numpy(host.ravel())


def _read_grad(renderer, name, like) -> "torch.Tensor":
    a, shape, packed = _slot(renderer, name)
    g = a.grad.to_numpy()
    if packed is not None:
        layout, name, sets = packed
        g = g.reshape(sets, layout.size)[:, layout.span(name)]
    return torch.from_numpy(np.ascontiguousarray(g.reshape(shape))).to(like)


class _Render(torch.autograd.Function):
    @staticmethod
    def forward(ctx, renderer, names, *tensors):
        r = renderer
        for name, t in zip(names, tensors):
            _write(r, name, t)
        r.rasterize()
        tape = ti.ad.Tape(loss=_seed())  # records the shading for the backward pass
        tape.__enter__()  # (never exited: the backward replays ``tape.calls`` itself)
        try:
            r.shade()
        finally:
            ti.lang.impl.get_runtime().target_tape = None
        ctx.renderer, ctx.names, ctx.tape, ctx.generation = r, names, tape, r.generation
        ctx.save_for_backward(*tensors)
        return torch.from_numpy(r.result().image).to(tensors[0].device)

    @staticmethod
    def backward(ctx, g_image):
        r, tape = ctx.renderer, ctx.tape
        backend.require_autodiff()
        if r.generation != ctx.generation:  # the renderer rendered something else since
            _Render.forward(ctx, r, ctx.names, *ctx.saved_tensors)
            tape = ctx.tape
        r.zero_grad()  # a backward may run more than once (gradcheck does)
        g = g_image.detach().cpu().numpy().astype(backend.np_real())
        r.image.grad.from_numpy(g.reshape(r.image.grad.to_numpy().shape))
        for func, args in reversed(tape.calls):  # the recorded shading, in reverse
            if hasattr(func, "grad"):
                func.grad(*args)
        grads = [
            _read_grad(r, name, t) if ctx.needs_input_grad[2 + i] else None
            for i, (name, t) in enumerate(zip(ctx.names, ctx.saved_tensors))
        ]
        return (None, None, *grads)


_SEEDS: dict = {}


def _seed():
    """A 0-d array the recording tape seeds (the image gradient comes from torch)."""
    key = (id(ti.lang.impl.get_runtime().prog), backend.precision())
    if key not in _SEEDS:
        _SEEDS.clear()
        _SEEDS[key] = arrays.empty(1, grad=True)
    return _SEEDS[key]


def _check_range(renderer, name: str, t) -> None:
    """Raise :class:`UserError` for values the renderer cannot use: out of a material's,
    light's or view parameter's range (e.g. fov in (0, 180)), coordinates too large for the
    precision. Colours and texels may be negative (linear values; an optimizer may step
    below zero), as in the native renderer."""
    value = t.detach().cpu().numpy()  # no copy for CPU tensors
    if name == "positions":
        backend.check_magnitude(value, "input positions")
    packed = _slot(renderer, name)[2]
    if packed is not None:
        owner = {VIEW: renderer.vertex.params, MATERIAL_LAYOUT.names: renderer.material}
        owner = next((o for names, o in owner.items() if name in names), renderer.lights)
        for row in value.reshape(packed[2], *packed[0].shapes[name]):  # one check per set
            owner.check({name: row})


def render(renderer, **inputs) -> "torch.Tensor":
    """The renderer's image — (H, W, 3), or (B, H, W, 3) for a batch of cameras — as a
    differentiable function of the named tensors ``inputs``: ``positions``, ``normals``,
    ``colors`` (V, 3), ``uvs`` (V, 2), ``texture`` (h, w, 3); material ``base_color``
    (3,), ``specular``, ``shininess``, ``roughness``, ``metallic``, ``opacity`` (); lights
    ``ambient`` (3,), ``dir_direction``, ``dir_color``, ``point_position``,
    ``point_color`` (4, 3), ``sh`` (9, 3) (a leading (B,) axis with per-view lights);
    pose / camera ``pose_rotation``, ``pose_translation``, ``camera_rotation``,
    ``camera_translation`` (3,) and ``fov`` () degrees ((B, ...) for a batch). Inputs
    are copied into the renderer (everything not passed keeps its value); the backward
    pass replays the recorded shading (visibility is not differentiated in mode "hard":
    use "antialias" for silhouettes)."""
    if not inputs:
        raise UserError(f"pass at least one input tensor; choose from {', '.join(INPUTS)}")
    names = tuple(inputs)
    tensors = []
    for name in names:
        if name not in INPUTS:
            raise UserError(f"unknown input {name!r}; choose from {', '.join(INPUTS)}")
        t = inputs[name]
        if not isinstance(t, torch.Tensor):
            raise UserError(f"input {name} must be a torch.Tensor, got {type(t).__name__}")
        expected = _slot(renderer, name)[1]
        if tuple(t.shape) != tuple(expected):
            raise UserError(f"input {name} must have shape {tuple(expected)}, got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise UserError(f"input {name} contains NaN or inf; pass finite values")
        _check_range(renderer, name, t)
        tensors.append(t)
    return _Render.apply(renderer, names, *tensors)
