"""Programs with discrete choices, differentiated: the choice made in the forward pass is
recorded and replayed backwards. ``sort``: a stable sort by key whose gather scatters
gradients back through the permutation (:mod:`taichi_dr.discrete.sort`); ``kdtree``: a k-d
tree for nearest neighbours and closest points on meshes (:mod:`taichi_dr.discrete.kdtree`)."""

from .kdtree import KDTree, TriangleTree
from .sort import argsort, counting_pass, exclusive_scan, gather, scatter, sort_by_key

__all__ = [
    "KDTree",
    "TriangleTree",
    "argsort",
    "counting_pass",
    "exclusive_scan",
    "gather",
    "scatter",
    "sort_by_key",
]
