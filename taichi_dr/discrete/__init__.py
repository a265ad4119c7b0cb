"""Programs with discrete choices, differentiated: a k-d tree for nearest neighbours and
closest points on meshes (the choice found is recorded and replayed backwards)."""

from .kdtree import KDTree, TriangleTree

__all__ = ["KDTree", "TriangleTree"]
