"""Voxel grids as a scene: density + colour per cell, dense or sparse (Taichi SNodes), rendered
by the emission–absorption marcher and fitted to images (``taichi-dr fit voxels``)."""

from .grid import DenseGrid, March, SparseGrid

__all__ = ["DenseGrid", "March", "SparseGrid"]
