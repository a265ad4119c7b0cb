"""PyTorch bridge (optional extra ``torch``): rendering as a differentiable torch function.

``render(renderer, positions=p, colors=c, roughness=r, ...)`` copies the given tensors
into the renderer's fields, rasterizes and shades, and returns the image (H, W, 3), row 0
at the top, in the renderer's float type on the first input's device. Its backward pass
re-uploads the saved inputs, rasterizes again and runs the renderer's reverse pass on
``L = Σ grad_output ⊙ image`` under ``ti.ad.Tape`` (dL/dθ = grad_output · ∂image/∂θ), then
returns each input's gradient in that input's dtype and device. Everything not passed
(lights, material, camera...) keeps the renderer's current value, in both passes.

Inputs (shapes; V = the mesh's vertex count): ``positions``, ``normals``, ``colors`` (V, 3),
``uvs`` (V, 2), ``texture`` (h, w, 3) of the renderer's texture, material ``base_color``
(3,), ``specular``, ``shininess``, ``roughness``, ``metallic``, ``opacity`` (), lights
``ambient`` (3,), ``dir_direction``, ``dir_color``, ``point_position``, ``point_color``
(4, 3), ``sh`` (9, 3), and pose / camera ``pose_rotation``, ``pose_translation``,
``camera_rotation``, ``camera_translation`` (3,), ``fov`` () in degrees (see ``vertex``).
Visibility has no gradient in "hard" mode; use ``mode="antialias"`` for silhouettes.
"""

import warnings
import weakref
from typing import NamedTuple

import numpy as np
import taichi as ti

from . import backend
from .camera import check_resolution
from .errors import UserError
from .render import interpolate as interpolation
from .render import raster
from .render.arrays import Frame

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "taichi_dr.torch needs PyTorch; install it with: pip install 'taichi-dr[torch]'"
    ) from e

PER_VERTEX = ("positions", "normals", "colors", "uvs")
MATERIAL = ("base_color", "specular", "shininess", "roughness", "metallic", "opacity")
LIGHTS = ("ambient", "dir_direction", "dir_color", "point_position", "point_color", "sh")
VIEW = ("pose_rotation", "pose_translation", "camera_rotation", "camera_translation", "fov")
INPUTS = (*PER_VERTEX, "texture", *MATERIAL, *LIGHTS, *VIEW)


def _target(renderer, name: str):
    """(field, rows): the renderer field of input ``name``; ``rows`` = leading rows used
    (None: the whole field)."""
    if name in PER_VERTEX:
        return getattr(renderer.mesh, name), renderer.mesh.num_vertices
    if name == "texture":
        if renderer.texture is None:
            raise UserError("the renderer has no texture; give it one (set_texture) first")
        return renderer.texture.texels, None
    owner = renderer.material if name in MATERIAL else renderer.lights
    if name in VIEW:
        owner = renderer.vertex
    return getattr(owner, name), None


def _shape(field, rows) -> tuple:
    shape = tuple(field.shape)
    if rows is not None:
        shape = (rows, *shape[1:])
    if hasattr(field, "n"):
        shape += (field.n,) if field.ndim == 1 else (field.n, field.m)
    return shape


def _upload(renderer, names, tensors) -> None:
    for name, t in zip(names, tensors):
        field, rows = _target(renderer, name)
        value = t.detach().cpu().numpy().astype(np.float64)
        if not np.all(np.isfinite(value)):
            raise UserError(f"input {name} contains NaN or inf; pass finite values")
        if rows is not None:
            full = field.to_numpy().astype(np.float64)
            full[:rows] = value
            value = full
        backend.write(field, value)


def _gradient(renderer, name: str, like: "torch.Tensor") -> "torch.Tensor":
    field, rows = _target(renderer, name)
    g = field.grad.to_numpy()
    if rows is not None:
        g = g[:rows]
    return torch.from_numpy(np.ascontiguousarray(g)).to(device=like.device, dtype=like.dtype)


@ti.kernel
def _contract(image: ti.template(), weights: ti.template(), loss: ti.template()):
    for y, x in image:
        loss[None] += (image[y, x] * weights[y, x]).sum()


@ti.data_oriented
class _Cotangent:
    """grad_output as a field (H, W, 3) and the scalar L = Σ grad_output ⊙ image."""

    def __init__(self, renderer):
        real = backend.real()
        self.weights = ti.Vector.field(3, real, shape=(renderer.height, renderer.width))
        self.loss = ti.field(real, shape=(), needs_grad=True)


_COTANGENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _Render(torch.autograd.Function):
    @staticmethod
    def forward(ctx, renderer, names, *tensors):
        _upload(renderer, names, tensors)
        renderer.rasterize()
        renderer.shade()
        ctx.renderer, ctx.names = renderer, names
        ctx.save_for_backward(*tensors)
        image = torch.from_numpy(renderer.image.to_numpy())
        return image.to(device=tensors[0].device)

    @staticmethod
    def backward(ctx, grad_output):
        r, names, tensors = ctx.renderer, ctx.names, ctx.saved_tensors
        backend.require_autodiff()
        c = _COTANGENTS.get(r)
        if c is None:
            c = _COTANGENTS[r] = _Cotangent(r)
        _upload(r, names, tensors)  # the renderer may have rendered other inputs since
        c.weights.from_numpy(grad_output.detach().cpu().numpy().astype(backend.np_real()))
        r.rasterize()
        c.loss[None] = 0.0
        with ti.ad.Tape(c.loss):
            r.shade()
            _contract(r.image, c.weights, c.loss)
        grads = [
            _gradient(r, name, t) if ctx.needs_input_grad[2 + i] else None
            for i, (name, t) in enumerate(zip(names, tensors))
        ]
        return (None, None, *grads)


def render(renderer, **inputs) -> "torch.Tensor":
    """The renderer's image (H, W, 3) as a differentiable function of the named tensor
    ``inputs`` (see the module docstring for names and shapes)."""
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
        expected = _shape(*_target(renderer, name))
        if tuple(t.shape) != expected:
            raise UserError(f"input {name} must have shape {expected}, got {tuple(t.shape)}")
        tensors.append(t)
    return _Render.apply(renderer, names, *tensors)


# --------------------------------------------------------------------------- stage ops
# Each op is a torch.autograd.Function over the compile-once array kernels: tensors go to
# the kernels without copies, and each backward runs only its own stage's reverse pass.


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


def _real(t: "torch.Tensor", name: str) -> "torch.Tensor":
    """``t`` as a contiguous tensor of the backend's float type (a copy only if needed)."""
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
    if not torch.isfinite(t).all():
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
