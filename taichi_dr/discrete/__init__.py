"""Derivatives through discrete choices. ``sort``: a stable sort by key whose gather
scatters gradients back through the permutation (see :mod:`taichi_dr.discrete.sort`)."""

from .sort import argsort, counting_pass, exclusive_scan, gather, scatter, sort_by_key

__all__ = ["argsort", "counting_pass", "exclusive_scan", "gather", "scatter", "sort_by_key"]
