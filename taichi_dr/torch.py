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

import weakref

import numpy as np
import taichi as ti

from . import backend
from .errors import UserError

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
