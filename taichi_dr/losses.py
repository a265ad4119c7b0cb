"""Image losses and mesh regularizers that *add* into a 0-d loss field.

Every loss here is a Taichi kernel (or a short chain of them) that accumulates
``loss[None] += weight * value`` so several terms can share one loss field inside
``ti.ad.Tape(loss)`` together with the renderer's kernels (the Tape zeroes the loss on
entry; outside a Tape, zero it yourself). Nothing goes through Python per element.

Image losses take fields of the same shape: a vector field ``(H, W)`` with C components
(the renderer's images), or a scalar field ``(H, W)`` or ``(H, W, C)``.

* :func:`image_loss` — ``kind="l2"`` (mean squared error) or ``"l1"`` (mean absolute
  error): ``weight / (H·W·C) · Σ_pixels m_p Σ_c ρ(pred − target)``, i.e. the mean over all
  pixels and channels like ``torch.nn.functional.mse_loss``. An optional mask ``m`` (H, W)
  weighs pixels without changing the normaliser. L1's gradient at a zero residual is 0.
* :class:`SoftIoULoss` — ``weight · (1 − Σ a·b / (Σ (a + b − a·b) + eps))`` for soft
  silhouettes a, b in [0, 1] (Soft Rasterizer's IoU loss).

Mesh regularizers borrow the renderer's ``positions`` (V,) 3-vector field and a face list
(fixed topology, read once at construction; fields may have more capacity than the
``num_vertices`` / ``num_faces`` in use). All are means, as in PyTorch3D:

* :class:`LaplacianLoss` — ``mean_i ||δ_i||²`` with ``δ_i = Σ_j w_ij x_j / Σ_j w_ij − x_i``
  over the neighbours j of i: ``"uniform"`` weights w_ij = 1, ``"cotangent"`` weights
  w_ij = cot α_ij + cot β_ij computed from the current positions (and differentiated).
* :class:`EdgeLengthLoss` — ``mean_edges (|x_i − x_j| − target)²`` (target 0: ``|e|²``).
* :class:`NormalConsistencyLoss` — ``mean (1 − cos θ)`` over pairs of faces sharing an
  edge, θ the angle between their normals (winding-independent, as PyTorch3D).

Point-set losses over a k-d tree (:mod:`taichi_dr.discrete.kdtree`), differentiable away
from the switching sets where the nearest neighbour changes (the neighbour found in the
forward pass is recorded and held fixed in the backward pass):

* :class:`ChamferLoss` — ``weight · ½ (mean_i min_j |a_i − b_j|² + mean_j min_i |a_i − b_j|²)``
  between two point clouds (squared distances, as PyTorch3D's ``chamfer_distance``).
* :class:`PointMeshLoss` — ``weight · mean_i min_{x ∈ mesh} |p_i − x|²``: squared distance of
  points to a triangle mesh's surface, differentiable in the points and the mesh vertices.
"""

import math

import numpy as np
import taichi as ti

from . import backend
from .errors import UserError

_EPS = 1e-12  # guards divisions by a vanishing area or normal length


def loss_field():
    """A new 0-d loss field (``backend.real()``, ``needs_grad=True``)."""
    return ti.field(backend.real(), shape=(), needs_grad=True)


# --------------------------------------------------------------------------- checks


def _is_field(f) -> bool:
    return isinstance(f, (ti.ScalarField, ti.MatrixField))


def _describe(f) -> str:
    n = f"{f.n}-vector " if isinstance(f, ti.MatrixField) else "scalar "
    return f"{n}field of shape {tuple(f.shape)}"


def _check_loss(loss) -> None:
    if not isinstance(loss, ti.ScalarField) or tuple(loss.shape) != ():
        raise UserError(
            "the loss must be a 0-d scalar field; allocate it with taichi_dr.losses.loss_field()"
        )


def _check_weight(weight) -> float:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = math.nan
    if not math.isfinite(w):
        raise UserError(f"loss weight is {weight}; give a finite number")
    return w


def _check_images(pred, target, what: str) -> None:
    for name, f in (("prediction", pred), ("target", target)):
        if not _is_field(f):
            raise UserError(f"{what}: the {name} must be a Taichi field, got {type(f).__name__}")
    same = type(pred) is type(target) and tuple(pred.shape) == tuple(target.shape)
    if same and isinstance(pred, ti.MatrixField):
        same = (pred.n, pred.m) == (target.n, target.m)
    if not same:
        raise UserError(
            f"{what}: images have different shapes (prediction {_describe(pred)}, target "
            f"{_describe(target)}); render the prediction at the target's resolution and channels"
        )
    if len(pred.shape) not in (2, 3) or (isinstance(pred, ti.MatrixField) and len(pred.shape) != 2):
        raise UserError(
            f"{what}: expected an (H, W) image field, got a {_describe(pred)}; "
            "pass (H, W) scalar/vector fields or an (H, W, C) scalar field"
        )


def _count(f) -> int:
    n = int(np.prod(f.shape))
    if isinstance(f, ti.MatrixField):
        n *= f.n * f.m
    return n


# --------------------------------------------------------------------------- image losses


@ti.func
def _rho(d, l1: ti.template()):
    if ti.static(l1):
        return ti.abs(d)
    else:
        return d * d


@ti.kernel
def _image_residual(
    pred: ti.template(),
    target: ti.template(),
    mask: ti.template(),
    loss: ti.template(),
    scale: float,
    l1: ti.template(),
    masked: ti.template(),
):
    for I in ti.grouped(pred):
        m = 1.0
        if ti.static(masked):
            m = mask[I[0], I[1]]
        r = _rho(pred[I] - target[I], l1)
        if ti.static(isinstance(pred, ti.MatrixField)):
            loss[None] += scale * m * r.sum()
        else:
            loss[None] += scale * m * r


def image_loss(pred, target, loss, kind: str = "l2", mask=None, weight: float = 1.0) -> None:
    """Add ``weight ·`` mean over pixels and channels of ``|pred − target|²`` (``"l2"``) or
    ``|pred − target|`` (``"l1"``) to ``loss``; ``mask`` (H, W) scalar weighs each pixel."""
    if kind not in ("l1", "l2"):
        raise UserError(f"unknown image loss {kind!r}; choose 'l1' or 'l2'")
    _check_images(pred, target, f"{kind} loss")
    _check_loss(loss)
    w = _check_weight(weight)
    if mask is not None:
        H, W = pred.shape[:2]
        if not isinstance(mask, ti.ScalarField) or tuple(mask.shape) != (H, W):
            got = _describe(mask) if _is_field(mask) else type(mask).__name__
            raise UserError(
                f"{kind} loss: the mask must be a scalar field of shape ({H}, {W}), got {got}"
            )
    scale = w / _count(pred)
    _image_residual(
        pred, target, pred if mask is None else mask, loss, scale, kind == "l1", mask is not None
    )


def l1_loss(pred, target, loss, mask=None, weight: float = 1.0) -> None:
    """Mean absolute error; see :func:`image_loss`."""
    image_loss(pred, target, loss, "l1", mask, weight)


def mse_loss(pred, target, loss, mask=None, weight: float = 1.0) -> None:
    """Mean squared error; see :func:`image_loss`."""
    image_loss(pred, target, loss, "l2", mask, weight)


@ti.data_oriented
class SoftIoULoss:
    """``weight · (1 − Σ a·b / (Σ (a + b − a·b) + eps))`` over all pixels of two soft
    silhouettes (scalar fields (H, W), values in [0, 1]). Owns the two sums (0-d fields
    with gradients); call it at most once per Tape (the sums are overwritten each call)."""

    def __init__(self, eps: float = 1e-6):
        backend.ensure_init()
        self.eps = float(eps)
        self.intersection = ti.field(backend.real(), shape=(), needs_grad=True)
        self.union = ti.field(backend.real(), shape=(), needs_grad=True)

    @ti.kernel
    def _clear_sums(self):
        self.intersection[None] = 0.0
        self.union[None] = 0.0

    @ti.kernel
    def _sum_overlap(self, a: ti.template(), b: ti.template()):
        for I in ti.grouped(a):
            ab = a[I] * b[I]
            self.intersection[None] += ab
            self.union[None] += a[I] + b[I] - ab

    @ti.kernel
    def _add_ratio(self, loss: ti.template(), weight: float, eps: float):
        loss[None] += weight * (1.0 - self.intersection[None] / (self.union[None] + eps))

    def forward(self, pred, target, loss, weight: float = 1.0) -> None:
        _check_images(pred, target, "soft IoU loss")
        if not isinstance(pred, ti.ScalarField):
            raise UserError(
                f"soft IoU loss: silhouettes must be scalar fields, got a {_describe(pred)}; "
                "pass the renderer's alpha/coverage field"
            )
        _check_loss(loss)
        w = _check_weight(weight)
        self._clear_sums()
        self._sum_overlap(pred, target)
        self._add_ratio(loss, w, self.eps)

    __call__ = forward


# --------------------------------------------------------------------------- mesh topology


def mesh_topology(positions, faces, num_vertices=None, num_faces=None):
    """Validate a (V,) 3-vector ``positions`` field and a face list (an (F, 3) int field or
    array) of which the first ``num_vertices`` / ``num_faces`` are used (default: all).
    Returns ``(num_vertices, faces)`` with ``faces`` an (num_faces, 3) int64 array."""
    if not isinstance(positions, ti.MatrixField) or positions.n != 3 or len(positions.shape) != 1:
        got = _describe(positions) if _is_field(positions) else type(positions).__name__
        raise UserError(f"positions must be a (V,) 3-vector field, got {got}")
    V = positions.shape[0] if num_vertices is None else int(num_vertices)
    if not 0 < V <= positions.shape[0]:
        raise UserError(
            f"num_vertices is {num_vertices} but positions hold {positions.shape[0]}; fix the count"
        )
    f = faces.to_numpy() if _is_field(faces) else np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise UserError(f"faces have shape {f.shape}; expected (F, 3) vertex indices")
    n = len(f) if num_faces is None else int(num_faces)
    if not 0 < n <= len(f):
        raise UserError(f"num_faces is {num_faces} but the face list holds {len(f)}; fix the count")
    f = np.ascontiguousarray(f[:n], dtype=np.int64)
    bad = (f < 0) | (f >= V)
    if bad.any():
        raise UserError(
            f"a face uses vertex {f[bad][0]} outside [0, {V}); fix the faces or num_vertices"
        )
    return V, f


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """Undirected edges (E, 2) of a face list, each once, sorted (smaller index first)."""
    e = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(e, axis=0)


def _face_pairs(faces: np.ndarray) -> np.ndarray:
    """(P, 4) rows (v0, v1, a, b): faces (v0, v1, a) and (v1, v0, b) share edge v0–v1;
    every pair of faces around an edge (all pairs at a non-manifold edge)."""
    F = len(faces)
    k = np.arange(3)
    edge_a, edge_b, opp = faces[:, k], faces[:, (k + 1) % 3], faces[:, (k + 2) % 3]
    lo = np.minimum(edge_a, edge_b).ravel()
    hi = np.maximum(edge_a, edge_b).ravel()
    opp = opp.ravel()
    order = np.lexsort((hi, lo))
    lo, hi, opp = lo[order], hi[order], opp[order]
    starts = np.flatnonzero(np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
    sizes = np.diff(np.r_[starts, 3 * F])
    rows = [
        (lo[s], hi[s], opp[s + i], opp[s + j])
        for s, n in zip(starts[sizes > 1], sizes[sizes > 1])
        for i in range(n)
        for j in range(i + 1, n)
    ]
    return np.array(rows, dtype=np.int32).reshape(-1, 4)


@ti.data_oriented
class _MeshRegularizer:
    """Common construction: validated counts and the face list as a NumPy array."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None):
        backend.ensure_init()
        V, f = mesh_topology(positions, faces, num_vertices, num_faces)
        self.positions, self.num_vertices, self.faces_np = positions, V, f

    def _index_field(self, rows: np.ndarray):
        field = ti.Vector.field(rows.shape[1], ti.i32, shape=max(len(rows), 1))
        if len(rows):
            field.from_numpy(rows.astype(np.int32))
        return field


class LaplacianLoss(_MeshRegularizer):
    """``mean_i ||Σ_j w_ij x_j / Σ_j w_ij − x_i||²`` over the ``num_vertices`` vertices
    (``kind="uniform"``: w = 1; ``"cotangent"``: w = cot α + cot β of the current mesh).
    Vertices without neighbours (or with Σ w = 0) contribute 0."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None, kind="uniform"):
        if kind not in ("uniform", "cotangent"):
            raise UserError(f"unknown Laplacian {kind!r}; choose 'uniform' or 'cotangent'")
        super().__init__(positions, faces, num_vertices, num_faces)
        self.kind = kind
        real = backend.real()
        V = self.num_vertices
        self.weight_sum = ti.field(real, shape=V, needs_grad=True)
        self.weighted = ti.Vector.field(3, real, shape=V, needs_grad=True)
        if kind == "uniform":
            e = unique_edges(self.faces_np)
            self.edges = self._index_field(e)
            self.num_edges = len(e)
        else:
            self.tris = self._index_field(self.faces_np)

    @ti.kernel
    def _clear_sums(self):
        for i in self.weight_sum:
            self.weight_sum[i] = 0.0
            self.weighted[i] = ti.Vector.zero(self.weighted.dtype, 3)

    @ti.kernel
    def _gather_uniform(self, n: ti.i32):
        for k in range(n):
            i, j = self.edges[k][0], self.edges[k][1]
            self.weight_sum[i] += 1.0
            self.weight_sum[j] += 1.0
            self.weighted[i] += self.positions[j]
            self.weighted[j] += self.positions[i]

    @ti.kernel
    def _gather_cotangent(self, n: ti.i32):
        for f in range(n):
            for c in ti.static(range(3)):
                o, i, j = self.tris[f][c], self.tris[f][(c + 1) % 3], self.tris[f][(c + 2) % 3]
                a = self.positions[i] - self.positions[o]
                b = self.positions[j] - self.positions[o]
                w = a.dot(b) / ti.max(a.cross(b).norm(), _EPS)
                self.weight_sum[i] += w
                self.weight_sum[j] += w
                self.weighted[i] += w * self.positions[j]
                self.weighted[j] += w * self.positions[i]

    @ti.kernel
    def _add_energy(self, loss: ti.template(), scale: float):
        for i in self.weight_sum:
            s = self.weight_sum[i]
            valid = ti.abs(s) > _EPS
            inv = ti.select(valid, 1.0 / ti.select(valid, s, 1.0), 0.0)
            d = self.weighted[i] * inv - self.positions[i]
            loss[None] += scale * ti.select(valid, 1.0, 0.0) * d.norm_sqr()

    def forward(self, loss, weight: float = 1.0) -> None:
        _check_loss(loss)
        w = _check_weight(weight)
        self._clear_sums()  # a kernel, not Field.fill: Taichi cannot differentiate fill
        if self.kind == "uniform":
            self._gather_uniform(self.num_edges)
        else:
            self._gather_cotangent(len(self.faces_np))
        self._add_energy(loss, w / self.num_vertices)

    __call__ = forward


class EdgeLengthLoss(_MeshRegularizer):
    """``mean_edges (|x_i − x_j| − target_length)²`` over the unique edges."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None, target_length=0.0):
        super().__init__(positions, faces, num_vertices, num_faces)
        self.target_length = float(target_length)
        if not (math.isfinite(self.target_length) and self.target_length >= 0):
            raise UserError(f"target_length is {target_length}; give a finite length ≥ 0")
        e = unique_edges(self.faces_np)
        self.edges, self.num_edges = self._index_field(e), len(e)

    @ti.kernel
    def _add_edges(self, loss: ti.template(), n: ti.i32, scale: float, target: float):
        for k in range(n):
            d = self.positions[self.edges[k][0]] - self.positions[self.edges[k][1]]
            r = d.norm_sqr()  # target 0: |e|², no sqrt (its gradient is singular at 0)
            if target != 0.0:
                r = (d.norm() - target) ** 2
            loss[None] += scale * r

    def forward(self, loss, weight: float = 1.0) -> None:
        _check_loss(loss)
        w = _check_weight(weight)
        self._add_edges(loss, self.num_edges, w / self.num_edges, self.target_length)

    __call__ = forward


class NormalConsistencyLoss(_MeshRegularizer):
    """``mean (1 − cos θ)`` over pairs of faces sharing an edge (all pairs at a
    non-manifold edge); 0 when the mesh has no such pair."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None):
        super().__init__(positions, faces, num_vertices, num_faces)
        p = _face_pairs(self.faces_np)
        self.pairs, self.num_pairs = self._index_field(p), len(p)

    @ti.kernel
    def _add_pairs(self, loss: ti.template(), n: ti.i32, scale: float):
        for k in range(n):
            q = self.pairs[k]
            x0 = self.positions[q[0]]
            e = self.positions[q[1]] - x0
            n0 = e.cross(self.positions[q[2]] - x0)
            n1 = (self.positions[q[3]] - x0).cross(e)
            length = ti.sqrt(ti.max(n0.norm_sqr() * n1.norm_sqr(), _EPS * _EPS))
            loss[None] += scale * (1.0 - n0.dot(n1) / length)

    def forward(self, loss, weight: float = 1.0) -> None:
        _check_loss(loss)
        w = _check_weight(weight)
        if self.num_pairs:
            self._add_pairs(loss, self.num_pairs, w / self.num_pairs)

    __call__ = forward


# --------------------------------------------------------------------------- point sets


@ti.kernel
def _pair_distances(
    x: ti.template(),
    y: ti.template(),
    partner: ti.types.ndarray(dtype=ti.i32, ndim=1),
    scale: float,
    loss: ti.template(),
):
    """``loss += scale · Σ_i |x_i − y_partner(i)|²``; Taichi derives the adjoint (the
    partners are fixed data: the replayed choice)."""
    for i in range(partner.shape[0]):
        loss[None] += scale * (x[i] - y[partner[i]]).norm_sqr()


@ti.kernel
def _surface_distances(
    p: ti.template(),
    v: ti.template(),
    faces: ti.types.ndarray(dtype=ti.i32, ndim=2),
    face: ti.types.ndarray(dtype=ti.i32, ndim=1),
    bary: ti.types.ndarray(ndim=2),
    scale: float,
    loss: ti.template(),
):
    """``loss += scale · Σ_i |p_i − Σ_c bary_ic v[faces[face_i, c]]|²`` (recorded face and
    barycentrics held fixed: the envelope theorem makes that the exact derivative)."""
    for i in range(face.shape[0]):
        f = face[i]
        c = bary[i, 0] * v[faces[f, 0]] + bary[i, 1] * v[faces[f, 1]] + bary[i, 2] * v[faces[f, 2]]
        loss[None] += scale * (p[i] - c).norm_sqr()


def _cloud(x, n, what: str):
    """(field, count, fixed) for a point cloud given as a (N,) 3-vector field of which the
    first ``n`` rows are used, or as an (N, 3) array (copied into a field without gradient;
    ``fixed`` is its array, whose tree is built once)."""
    from .discrete.kdtree import as_points

    if _is_field(x):
        if not isinstance(x, ti.MatrixField) or x.n != 3 or x.m != 1 or len(x.shape) != 1:
            raise UserError(f"{what} must be a (N,) 3-vector field or an (N, 3) array")
        count = x.shape[0] if n is None else int(n)
        if not 0 < count <= x.shape[0]:
            raise UserError(f"{what}: count {n} outside [1, {x.shape[0]}]; fix the count")
        return x, count, None
    points = as_points(x, what)
    field = ti.Vector.field(3, backend.real(), shape=len(points))
    field.from_numpy(points)
    return field, len(points), points


def _host(field, count, fixed) -> np.ndarray:
    """The cloud's current points as an (count, 3) array (NaN/inf refused)."""
    from .discrete.kdtree import as_points

    return fixed if fixed is not None else as_points(field.to_numpy()[:count], "point cloud")


@ti.data_oriented
class ChamferLoss:
    """``weight · ½ (mean_i min_j |a_i − b_j|² + mean_j min_i |a_i − b_j|²)`` between clouds
    ``a`` and ``b``: each a (N,) 3-vector field (first ``num_a`` / ``num_b`` rows; gradients
    reach it when it has ``needs_grad``) or an (N, 3) array (fixed; its tree is built once).

    Each call builds k-d trees over the current points, records every point's nearest
    neighbour in the other cloud and adds the loss; inside ``ti.ad.Tape`` the backward pass
    replays those pairs (Taichi differentiates the gather with the pairs fixed). Ties go to
    the smallest index. ``nearest_a`` / ``nearest_b`` hold the last pairs (NumPy)."""

    def __init__(self, a, b, num_a=None, num_b=None):
        backend.ensure_init()
        self.a, self.num_a, self._fixed_a = _cloud(a, num_a, "Chamfer cloud a")
        self.b, self.num_b, self._fixed_b = _cloud(b, num_b, "Chamfer cloud b")
        from .discrete.kdtree import KDTree

        self._trees = [KDTree(f) if f is not None else None for f in (self._fixed_a, self._fixed_b)]
        self.nearest_a = self.nearest_b = None  # a_i → b, b_j → a

    def _scales(self, weight) -> tuple[float, float]:
        w = _check_weight(weight)
        return 0.5 * w / self.num_a, 0.5 * w / self.num_b

    @ti.ad.grad_replaced
    def forward(self, loss, weight: float = 1.0) -> None:
        from .discrete.kdtree import KDTree

        _check_loss(loss)
        sa, sb = self._scales(weight)
        pa = _host(self.a, self.num_a, self._fixed_a)
        pb = _host(self.b, self.num_b, self._fixed_b)
        tree_a, tree_b = (t or KDTree(p) for t, p in zip(self._trees, (pa, pb)))
        self.nearest_a = tree_b.query_squared(pa)[1]
        self.nearest_b = tree_a.query_squared(pb)[1]
        _pair_distances(self.a, self.b, self.nearest_a, sa, loss)
        _pair_distances(self.b, self.a, self.nearest_b, sb, loss)

    @ti.ad.grad_for(forward)
    def backward(self, loss, weight: float = 1.0) -> None:
        """Replay the recorded pairs: ``loss.grad`` into ``a.grad`` and ``b.grad``."""
        sa, sb = self._scales(weight)
        _pair_distances.grad(self.a, self.b, self.nearest_a, sa, loss)
        _pair_distances.grad(self.b, self.a, self.nearest_b, sb, loss)

    def __call__(self, loss, weight: float = 1.0) -> None:
        self.forward(loss, weight)


@ti.data_oriented
class PointMeshLoss:
    """``weight · mean_i min_{x ∈ surface} |p_i − x|²``: squared distance of ``points`` (a
    (N,) 3-vector field, first ``num_points`` rows, or a fixed (N, 3) array) to the surface
    of a triangle mesh (``vertices``: a (V,) 3-vector field, first ``num_vertices`` rows, or
    a fixed (V, 3) array; ``faces`` (F, 3)). Gradients reach the points and, when they are
    a field with ``needs_grad``, the vertices.

    Each call finds every point's closest face and the barycentrics of the closest point
    (a k-d tree over the triangles, rebuilt when the vertices are a field) and records them;
    the backward pass replays them. ``closest_face`` / ``closest_bary`` hold the last ones."""

    def __init__(self, points, vertices, faces, num_points=None, num_vertices=None):
        backend.ensure_init()
        self.p, self.num_points, self._fixed_p = _cloud(points, num_points, "points")
        self.v, self.num_vertices, self._fixed_v = _cloud(vertices, num_vertices, "mesh vertices")
        from .discrete.kdtree import TriangleTree

        _, f = mesh_topology(self.v, faces, self.num_vertices)
        self.faces = np.ascontiguousarray(f, dtype=np.int32)
        self._tree = TriangleTree(self._fixed_v, self.faces) if self._fixed_v is not None else None
        self.closest_face = self.closest_bary = None

    @ti.ad.grad_replaced
    def forward(self, loss, weight: float = 1.0) -> None:
        from .discrete.kdtree import TriangleTree

        _check_loss(loss)
        scale = _check_weight(weight) / self.num_points
        tree = self._tree or TriangleTree(_host(self.v, self.num_vertices, None), self.faces)
        _, self.closest_face, self.closest_bary = tree.closest(
            _host(self.p, self.num_points, self._fixed_p)
        )
        _surface_distances(
            self.p, self.v, self.faces, self.closest_face, self.closest_bary, scale, loss
        )

    @ti.ad.grad_for(forward)
    def backward(self, loss, weight: float = 1.0) -> None:
        """Replay the recorded faces and barycentrics into ``points.grad`` (and
        ``vertices.grad``)."""
        scale = _check_weight(weight) / self.num_points
        _surface_distances.grad(
            self.p, self.v, self.faces, self.closest_face, self.closest_bary, scale, loss
        )

    def __call__(self, loss, weight: float = 1.0) -> None:
        self.forward(loss, weight)
