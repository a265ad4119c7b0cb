"""A k-d tree built in Taichi: nearest neighbours of points and closest points on triangles.

The tree is *implicit*: items (points, or triangles through their centroids) are reordered
so that every node is a contiguous range ``[b, e)`` of the order; a node with more than
``leaf_size`` items splits at ``mid = b + (e − b) // 2`` along the axis of its largest
extent, the item at ``mid`` is the median (quickselect) and stays in the node, ``[b, mid)``
and ``[mid + 1, e)`` are its children. Only the permutation, the split axis and (for
triangles) the largest item radius of every node are stored. The build runs level by level,
one thread per node (``split`` kernel: bounding box, then quickselect; top levels are
serial, the work is O(n) per level, O(n log n) in all); the queries run one thread per query
point with an explicit stack of the far children still to visit.

Queries are exact. **Ties** (several items at exactly the same distance, e.g. duplicate
points) go to the *smallest original index*: results are the first k entries of all items
sorted by (distance, index), whatever the tree's shape — a stable rule that scipy's
``cKDTree`` does not promise (its choice among equidistant points follows its own traversal).

Derivatives: the neighbour found is a piecewise-constant function of the points (it changes
only where two candidates are equidistant), so away from those switching sets the distance
to the found neighbour is differentiable with the neighbour held fixed — record the index in
the forward pass and replay it backwards (:mod:`taichi_dr.losses`: ``ChamferLoss``,
``PointMeshLoss``). For a triangle the closest point ``c = Σ b_i v_i`` minimises the distance
over the triangle, so (envelope theorem) ``∂d²/∂q = 2 (q − c)`` and ``∂d²/∂v_i = −2 b_i (q − c)``
with the recorded barycentrics ``b`` held fixed.

All kernels are module-level over ``ti.types.ndarray`` arguments: they compile once per
dtype and run any point count. Coordinates are stored in ``backend.real()``.
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError

LEAF_SIZE = 8  # items a node holds before it splits
MAX_K = 32  # largest k of a k-nearest-neighbour query
MAX_ITEMS = (1 << 31) - 1  # int32 indices
_STACK = 48  # far children pending per query; ≥ tree depth + 1 (≤ 32 for MAX_ITEMS)


# --------------------------------------------------------------------------- build


@ti.kernel
def _split(
    centre: ti.types.ndarray(ndim=2),
    radius: ti.types.ndarray(ndim=1),
    perm: ti.types.ndarray(ndim=1),
    axis: ti.types.ndarray(ndim=1),
    rmax: ti.types.ndarray(ndim=1),
    level: ti.i32,
    leaf: ti.i32,
):
    """Split every node of depth ``level`` that holds more than ``leaf`` items: choose the
    axis of the largest extent of its centres, move the median to ``mid`` (quickselect on
    ``perm``, smaller before, larger after) and store the axis and the largest item radius
    at ``mid``."""
    n = perm.shape[0]
    ti.loop_config(block_dim=1)  # one task per node, even when the level has few nodes
    for k in range(1 << level):
        b, e = 0, n
        for l in range(level):  # the node's range: follow the bits of k from the root
            mid = b + (e - b) // 2
            if (k >> (level - 1 - l)) & 1:
                b = mid + 1
            else:
                e = mid
        if e - b > leaf:
            j = perm[b]
            lo = ti.Vector([centre[j, 0], centre[j, 1], centre[j, 2]])
            hi = lo
            r = radius[j]
            for i in range(b + 1, e):
                j = perm[i]
                r = ti.max(r, radius[j])
                for a in ti.static(range(3)):
                    lo[a] = ti.min(lo[a], centre[j, a])
                    hi[a] = ti.max(hi[a], centre[j, a])
            ext = hi - lo
            ax = 0
            if ext[1] > ext[ax]:
                ax = 1
            if ext[2] > ext[ax]:
                ax = 2
            mid = b + (e - b) // 2
            axis[mid] = ax
            rmax[mid] = r
            left, right = b, e - 1  # Hoare quickselect of position mid
            while left < right:
                pivot = centre[perm[left + (right - left) // 2], ax]
                i, j = left, right
                while i <= j:
                    while centre[perm[i], ax] < pivot:
                        i += 1
                    while centre[perm[j], ax] > pivot:
                        j -= 1
                    if i <= j:
                        t = perm[i]
                        perm[i] = perm[j]
                        perm[j] = t
                        i += 1
                        j -= 1
                if mid <= j:
                    right = j
                elif mid >= i:
                    left = i
                else:
                    break


@ti.kernel
def _gather_rows(
    src: ti.types.ndarray(ndim=2), perm: ti.types.ndarray(ndim=1), dst: ti.types.ndarray(ndim=2)
):
    for i, c in ti.ndrange(perm.shape[0], src.shape[1]):
        dst[i, c] = src[perm[i], c]


def levels(n: int, leaf: int) -> int:
    """Depth of the tree over n items: levels whose largest node still splits."""
    depth, size = 0, n
    while size > leaf:
        depth, size = depth + 1, size // 2
    return depth


# --------------------------------------------------------------------------- queries


@ti.func
def _closest_on_triangle(p, a, b, c):
    """Barycentrics (u, v, w) of the point of triangle abc closest to p (Ericson, Real-Time
    Collision Detection §5.1.5); degenerate triangles fall back to their edges."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = ab.dot(ap), ac.dot(ap)
    bary = ti.Vector([1.0, 0.0, 0.0])
    bp = p - b
    d3, d4 = ab.dot(bp), ac.dot(bp)
    cp = p - c
    d5, d6 = ab.dot(cp), ac.dot(cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    if d1 <= 0 and d2 <= 0:
        bary = ti.Vector([1.0, 0.0, 0.0])
    elif d3 >= 0 and d4 <= d3:
        bary = ti.Vector([0.0, 1.0, 0.0])
    elif vc <= 0 and d1 >= 0 and d3 <= 0:
        t = d1 / (d1 - d3)
        bary = ti.Vector([1.0 - t, t, 0.0])
    elif d6 >= 0 and d5 <= d6:
        bary = ti.Vector([0.0, 0.0, 1.0])
    elif vb <= 0 and d2 >= 0 and d6 <= 0:
        t = d2 / (d2 - d6)
        bary = ti.Vector([1.0 - t, 0.0, t])
    elif va <= 0 and (d4 - d3) >= 0 and (d5 - d6) >= 0:
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        bary = ti.Vector([0.0, 1.0 - t, t])
    else:
        s = va + vb + vc
        if s > 0:
            bary = ti.Vector([va / s, vb / s, vc / s])
        else:  # degenerate: the best of the three edges
            best = ti.math.inf
            for e in ti.static(range(3)):
                u, w = (a, b, c)[e], (b, c, a)[e]
                uw = w - u
                t = 0.0
                if uw.norm_sqr() > 0:
                    t = ti.math.clamp((p - u).dot(uw) / uw.norm_sqr(), 0.0, 1.0)
                dist = (p - (u + t * uw)).norm_sqr()
                if dist < best:
                    best = dist
                    bary = ti.Vector([0.0, 0.0, 0.0])
                    bary[e] = 1.0 - t
                    bary[(e + 1) % 3] = t
    return bary


@ti.func
def _item(x, items: ti.template(), i, triangles: ti.template()):
    """Squared distance from x to item i (tree order) and, for triangles, barycentrics."""
    bary = ti.Vector([1.0, 0.0, 0.0])
    d2 = 0.0
    if ti.static(triangles):
        a = ti.Vector([items[i, 0], items[i, 1], items[i, 2]])
        b = ti.Vector([items[i, 3], items[i, 4], items[i, 5]])
        c = ti.Vector([items[i, 6], items[i, 7], items[i, 8]])
        bary = _closest_on_triangle(x, a, b, c)
        d2 = (x - (bary[0] * a + bary[1] * b + bary[2] * c)).norm_sqr()
    else:
        d2 = (x - ti.Vector([items[i, 0], items[i, 1], items[i, 2]])).norm_sqr()
    return d2, bary


@ti.func
def _offer(best_d: ti.template(), best_i: ti.template(), d2, o, k: ti.template()):
    """Insert candidate (d2, o) into the sorted k best; True when it got in."""
    better = d2 < best_d[k - 1] or (d2 == best_d[k - 1] and o < best_i[k - 1])
    if better:
        shifting = True
        for j in ti.static(range(k - 1, 0, -1)):
            if shifting:
                if d2 < best_d[j - 1] or (d2 == best_d[j - 1] and o < best_i[j - 1]):
                    best_d[j], best_i[j] = best_d[j - 1], best_i[j - 1]
                else:
                    best_d[j], best_i[j] = d2, o
                    shifting = False
        if shifting:
            best_d[0], best_i[0] = d2, o
    return better


@ti.kernel
def _search(
    queries: ti.types.ndarray(ndim=2),
    items: ti.types.ndarray(ndim=2),
    centre: ti.types.ndarray(ndim=2),
    perm: ti.types.ndarray(ndim=1),
    axis: ti.types.ndarray(ndim=1),
    rmax: ti.types.ndarray(ndim=1),
    leaf: ti.i32,
    k: ti.template(),
    triangles: ti.template(),
    out_index: ti.types.ndarray(ndim=2),
    out_d2: ti.types.ndarray(ndim=2),
    out_bary: ti.types.ndarray(ndim=2),
):
    """The k items nearest to every query point (tree order ``items``, ``centre``), sorted
    by (squared distance, original index). Triangles (k = 1): also the barycentrics."""
    n = perm.shape[0]
    for s in range(queries.shape[0]):
        x = ti.Vector([queries[s, 0], queries[s, 1], queries[s, 2]])
        best_d = ti.Vector([ti.math.inf] * k)
        best_i = ti.Vector([MAX_ITEMS] * k)
        best_b = ti.Vector([1.0, 0.0, 0.0])
        stack_b = ti.Vector.zero(ti.i32, _STACK)
        stack_e = ti.Vector.zero(ti.i32, _STACK)
        stack_d = ti.Vector.zero(float, _STACK)  # lower bound of the squared distance
        stack_e[0] = n
        top = 1
        while top > 0:
            top -= 1
            b, e = stack_b[top], stack_e[top]
            if stack_d[top] <= best_d[k - 1]:
                while e - b > leaf:  # descend to the leaf on x's side, stacking far sides
                    mid = b + (e - b) // 2
                    d2, bary = _item(x, items, mid, triangles)
                    if _offer(best_d, best_i, d2, perm[mid], k):
                        best_b = bary
                    ax = axis[mid]
                    d = x[ax] - centre[mid, ax]
                    gap = d * d
                    if ti.static(triangles):  # plane distance less the largest radius
                        gap = ti.max(ti.abs(d) - rmax[mid], 0.0) ** 2
                    if gap <= best_d[k - 1]:  # the far child may hold a candidate
                        stack_b[top], stack_e[top], stack_d[top] = b, mid, gap
                        if d < 0:
                            stack_b[top], stack_e[top] = mid + 1, e
                        top += 1
                    if d < 0:
                        e = mid
                    else:
                        b = mid + 1
                for i in range(b, e):
                    d2, bary = _item(x, items, i, triangles)
                    if _offer(best_d, best_i, d2, perm[i], k):
                        best_b = bary
        for j in ti.static(range(k)):
            out_index[s, j] = best_i[j]
            out_d2[s, j] = best_d[j]
        if ti.static(triangles):
            for c in ti.static(range(3)):
                out_bary[s, c] = best_b[c]


# --------------------------------------------------------------------------- public


def as_points(points, what: str = "points", allow_empty: bool = False) -> np.ndarray:
    """``points`` as a C-contiguous (N, 3) array of ``backend.np_real()``; a one-line
    UserError for another shape, NaN/inf coordinates or (unless allowed) no points."""
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be an (N, 3) array of numbers") from None
    if p.ndim != 2 or p.shape[1] != 3:
        raise UserError(f"{what} must have shape (N, 3), got {p.shape}")
    if len(p) == 0 and not allow_empty:
        raise UserError(f"{what} are empty; give at least one point")
    if len(p) > MAX_ITEMS:
        raise UserError(f"{what}: {len(p)} points are more than {MAX_ITEMS}; split the set")
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise UserError(
            f"{what} have {int(bad.sum())} rows with NaN/inf coordinates (first: row "
            f"{int(np.argmax(bad))}); remove or fix them"
        )
    return np.ascontiguousarray(p, dtype=backend.np_real())


class _Tree:
    """The implicit tree over item centres (N, 3) with radii (N,) (see the module
    docstring); ``items`` (N, C) are the per-item rows the queries read, in tree order."""

    def __init__(self, centre: np.ndarray, radius: np.ndarray, rows: np.ndarray, leaf_size: int):
        backend.ensure_init()
        if int(leaf_size) != leaf_size or leaf_size < 1:
            raise UserError(f"leaf_size must be an integer ≥ 1, got {leaf_size}")
        n, real = len(centre), backend.np_real()
        self.n, self.leaf = n, int(leaf_size)
        self.perm = np.arange(n, dtype=np.int32)
        self.axis = np.zeros(n, dtype=np.int32)
        self.rmax = np.zeros(n, dtype=real)
        radius = np.ascontiguousarray(radius, dtype=real)
        for level in range(levels(n, self.leaf)):
            _split(centre, radius, self.perm, self.axis, self.rmax, level, self.leaf)
        self.centre = np.empty_like(centre)
        _gather_rows(centre, self.perm, self.centre)
        rows = np.ascontiguousarray(rows, dtype=real)
        self.items = self.centre if rows is centre else np.empty_like(rows)
        if rows is not centre:
            _gather_rows(rows, self.perm, self.items)

    def search(self, x: np.ndarray, k: int, triangles: bool):
        m = len(x)
        index = np.empty((m, k), np.int32)
        d2 = np.empty((m, k), backend.np_real())
        bary = np.empty((m if triangles else 1, 3), backend.np_real())
        if m:
            _search(
                x,
                self.items,
                self.centre,
                self.perm,
                self.axis,
                self.rmax,
                self.leaf,
                k,
                triangles,
                index,
                d2,
                bary,
            )
        return index, d2, bary


class KDTree:
    """k-d tree over ``points`` (N, 3), built in Taichi; :meth:`query` mirrors
    ``scipy.spatial.cKDTree.query``. Ties go to the smallest index (module docstring)."""

    def __init__(self, points, leaf_size: int = LEAF_SIZE):
        p = as_points(points)
        self.n = len(p)
        self._tree = _Tree(p, np.zeros(self.n), p, leaf_size)

    def query(self, x, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances and indices of the ``k`` nearest points to each row of ``x``
        (M, 3): shapes (M,) for k = 1, else (M, k), nearest first."""
        d2, index = self.query_squared(x, k)
        return np.sqrt(d2), index

    def query_squared(self, x, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`query`, with squared distances (no square root)."""
        if isinstance(k, bool) or int(k) != k or not 1 <= k <= MAX_K:
            raise UserError(f"k must be an integer in [1, {MAX_K}], got {k}")
        if k > self.n:
            raise UserError(f"k = {k} is larger than the {self.n} points in the tree; lower k")
        x = as_points(x, "query points", allow_empty=True)
        index, d2, _ = self._tree.search(x, int(k), False)
        return (d2[:, 0], index[:, 0]) if k == 1 else (d2, index)


class TriangleTree:
    """k-d tree over the triangles ``faces`` (F, 3) of ``vertices`` (V, 3) (their centroids,
    pruned with each node's largest centroid-to-corner radius) for closest-point queries."""

    def __init__(self, vertices, faces, leaf_size: int = LEAF_SIZE):
        v = as_points(vertices, "mesh vertices")
        f = np.asarray(faces)
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise UserError(f"faces must be a non-empty (F, 3) index array, got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.integer) or f.min() < 0 or f.max() >= len(v):
            raise UserError(f"face indices must be integers in [0, {len(v)}); fix the faces")
        corners = v[f].astype(np.float64)  # (F, 3, 3)
        centroid = corners.mean(axis=1)
        radius = np.linalg.norm(corners - centroid[:, None], axis=2).max(axis=1)
        radius *= 1 + 4 * np.finfo(backend.np_real()).eps  # rounding of the stored corners
        real = backend.np_real()
        self.vertices, self.faces = v, np.ascontiguousarray(f, dtype=np.int32)
        self._tree = _Tree(
            centroid.astype(real), radius, corners.reshape(-1, 9).astype(real), leaf_size
        )

    def closest(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each query row of ``x`` (M, 3): squared distance to the mesh (M,), the index
        of the closest face (M,) and the barycentrics of the closest point on it (M, 3);
        the point is ``Σ_i bary[:, i] · vertices[faces[face, i]]``."""
        x = as_points(x, "query points", allow_empty=True)
        index, d2, bary = self._tree.search(x, 1, True)
        return d2[:, 0], index[:, 0], bary
