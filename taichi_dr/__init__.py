"""taichi_dr: a differentiable rasterizer and differentiable smoke simulator in Taichi.

Importing the package starts nothing: call :func:`init` (or let the first renderer do it).
"""

from .backend import init
from .camera import Camera, from_opencv, look_at, orbit, perspective
from .errors import UserError
from .scene import Mesh, blob, icosphere, large_mesh, load_mesh, textured_sphere, torus

__all__ = [
    "Camera",
    "Mesh",
    "UserError",
    "blob",
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
