"""Differentiable smoke simulation (2D/3D MAC grid) and volume rendering."""

from .grid import MacGrid, parse_boundary
from .pressure import PressureSolver
from .smoke import Smoke, SmokeConfig, dt_for_cfl, grid_to_image, image_to_grid
from .volume import VolumeRenderer

__all__ = [
    "MacGrid",
    "PressureSolver",
    "Smoke",
    "SmokeConfig",
    "VolumeRenderer",
    "dt_for_cfl",
    "grid_to_image",
    "image_to_grid",
    "parse_boundary",
]
