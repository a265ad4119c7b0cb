"""Points and 3D Gaussians: a differentiable splatting renderer (3DGS, gsplat's model)."""

from .pipeline import MODES, Render, render

__all__ = ["MODES", "Render", "render"]
