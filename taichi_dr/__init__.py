"""taichi_dr: a differentiable rasterizer and differentiable smoke simulator in Taichi.

Importing the package starts nothing: call :func:`init` (or let the first renderer do it).
The front door: :class:`Renderer`, :class:`RenderSettings`, :class:`RenderResult` (the
one-call function is ``taichi_dr.render.render``: ``taichi_dr.render`` stays the pipeline's
package), meshes and cameras; the PyTorch ops are ``taichi_dr.torch``.
"""

from .backend import init
from .camera import Camera, from_opencv, look_at, orbit, perspective
from .errors import UserError
from .render import Renderer, RenderResult, RenderSettings
from .scene import (
    Mesh,
    blob,
    concatenate,
    icosphere,
    large_mesh,
    load_mesh,
    textured_sphere,
    torus,
)

__all__ = [
    "Camera",
    "Mesh",
    "RenderResult",
    "RenderSettings",
    "Renderer",
    "UserError",
    "blob",
    "concatenate",
    "from_opencv",
    "icosphere",
    "init",
    "large_mesh",
    "load_mesh",
    "look_at",
    "orbit",
    "perspective",
    "textured_sphere",
    "torus",
]
