"""Image losses and mesh regularizers that *add* into a 0-d loss array.

Every loss here is a compile-once Taichi kernel (or a short chain of them) over
``ti.types.ndarray`` arguments that accumulates ``loss[None] += weight * value``, so
several terms can share one loss (:func:`loss_array`) inside ``ti.ad.Tape(loss=loss)``
together with the renderer's kernels. The Tape zeroes the loss on entry and seeds its
gradient, but it does not clear the gradients of other arrays: they accumulate, so zero
them before each Tape (``optimizer.zero_grad()``). Outside a Tape, zero the loss yourself
(``loss.fill(0)``). Nothing goes through Python per element.

Arrays are Taichi ndarrays, NumPy arrays or torch tensors (CPU tensors; CUDA tensors when
Taichi runs on cuda), passed to the kernels without copies. A kernel compiles once per
array layout (element type and number of axes) and then serves every size. Gradients
reach every input that carries them: a Taichi ndarray with ``needs_grad``, a torch tensor
with ``requires_grad`` (into its ``.grad``).

Image losses take a prediction and a target holding the same number of values (elements
× components), e.g. the renderer's flat (B·H·W,) vec3 image and a (B, H, W, 3) array:
values correspond in row-major order, so reshaped views line up. An optional mask holds
one weight per pixel (the C values of a pixel share one weight, C ≤ 4) or one per value.

* :func:`image_loss` — ``kind="l2"`` (mean squared error) or ``"l1"`` (mean absolute
  error): ``weight / S · Σ_values m · ρ(pred − target)`` over all S values, i.e. the mean
  over all pixels and channels like ``torch.nn.functional.mse_loss``. The mask m weighs
  values without changing the normaliser. L1's gradient at a zero residual is 0.
* :class:`SoftIoULoss` — ``weight · (1 − Σ a·b / (Σ (a + b − a·b) + eps))`` for soft
  silhouettes a, b in [0, 1] (Soft Rasterizer's IoU loss).

Mesh regularizers borrow a ``positions`` array ((V,) vec3 ndarray, or a (V, 3) tensor)
and read a face list once (fixed topology; ``num_vertices`` / ``num_faces`` may use only
the first entries). All are means, as in PyTorch3D:

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
from .render import arrays
from .render.arrays import Int, IVec2, IVec3, Real, Vec3

Array = ti.types.ndarray()  # any element type and number of axes: one compile per layout
IVec4 = ti.types.ndarray(dtype=ti.math.ivec4, ndim=1)
_EPS = 1e-12  # guards divisions by a vanishing area or normal length


def loss_array():
    """A new 0-d loss array (``backend.real()``, with a gradient), zero."""
    backend.ensure_init()
    return ti.ndarray(backend.real(), shape=(), needs_grad=True)


# --------------------------------------------------------------------------- checks


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch")


def _element_shape(a) -> tuple:
    """The shape of one element of a Taichi ndarray or field (``()`` for scalars and for
    NumPy arrays and tensors, whose elements are scalars)."""
    if isinstance(a, ti.MatrixField):
        return (a.n,) if a.m == 1 else (a.n, a.m)
    return tuple(getattr(a, "element_shape", ())) if isinstance(a, ti.Ndarray) else ()


def _is_float(a) -> bool:
    if _is_torch(a):
        return a.is_floating_point()
    return a.dtype in (ti.f32, ti.f64, np.float32, np.float64)


def _describe(a) -> str:
    if isinstance(a, (ti.Ndarray, ti.Field)):
        e = _element_shape(a)
        element = f"{e[0]}-vectors" if len(e) == 1 else "matrices" if e else "scalars"
        kind = "ndarray" if isinstance(a, ti.Ndarray) else "field"
        return f"Taichi {kind} {tuple(a.shape)} of {element} ({a.dtype})"
    if _is_torch(a) or isinstance(a, np.ndarray):
        kind = "torch tensor" if _is_torch(a) else "NumPy array"
        return f"{kind} {tuple(a.shape)} ({a.dtype})"
    return type(a).__name__


def _elements(a) -> int:
    return math.prod(a.shape)


def _count(a) -> int:
    """Number of values: elements × components."""
    return _elements(a) * math.prod(_element_shape(a))


def _array(a, what: str, flat: bool = False):
    """``a`` checked for the kernels: a Taichi ndarray of scalars or vectors, a float NumPy
    array or a float torch tensor on Taichi's device. ``flat``: NumPy arrays and torch
    tensors without gradient become 1-D views (fewer kernel layouts, no index arithmetic)."""
    if not (isinstance(a, (ti.Ndarray, np.ndarray)) or _is_torch(a)):
        raise UserError(
            f"{what} must be a Taichi ndarray, NumPy array or torch tensor, got {_describe(a)}"
        )
    if not _is_float(a) or len(_element_shape(a)) > 1:
        raise UserError(f"{what} is a {_describe(a)}; pass float scalars or vectors")
    if isinstance(a, ti.Ndarray):
        return a
    if _is_torch(a):
        on_cuda = backend.current_arch() == "cuda"
        if a.is_cuda != on_cuda:
            raise UserError(
                f"{what} is on {a.device} but Taichi runs on {backend.current_arch()}; "
                f"move it with .to({'cuda' if on_cuda else 'cpu'})"
            )
        if a.requires_grad:  # gradients go into a.grad: no copy, no view
            if not a.is_contiguous():
                raise UserError(f"{what} is not contiguous; pass tensor.contiguous()")
            return a
        return a.detach().contiguous().view(-1) if flat else a.detach().contiguous()
    a = np.ascontiguousarray(a)
    return a.reshape(-1) if flat else a


def _layout(a) -> tuple:
    return tuple(a.shape), _element_shape(a)


def _check_loss(loss) -> None:
    ok = isinstance(loss, ti.Ndarray) or _is_torch(loss)
    if not ok or tuple(loss.shape) != () or not _is_float(loss):
        raise UserError(
            "the loss must be a 0-d float array; allocate it with taichi_dr.losses.loss_array()"
        )


def _check_weight(weight) -> float:
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = math.nan
    if not math.isfinite(w):
        raise UserError(f"loss weight is {weight}; give a finite number")
    return w


def _image_pair(pred, target, what: str):
    """The prediction and target checked to hold the same number of values; returns them
    (NumPy arrays and tensors without gradient as flat views) and whether they share one
    layout (then the kernel reads them by the same index)."""
    pred = _array(pred, f"{what}: the prediction", flat=True)
    target = _array(target, f"{what}: the target", flat=True)
    if _count(pred) != _count(target):
        raise UserError(
            f"{what}: the prediction ({_describe(pred)}, {_count(pred)} values) and the "
            f"target ({_describe(target)}, {_count(target)} values) differ in size; render "
            "the prediction at the target's resolution, views and channels"
        )
    return pred, target, _layout(pred) == _layout(target)


# --------------------------------------------------------------------------- array access


def _width(a) -> int:
    """Components per element of array ``a`` inside a kernel (1 for scalars)."""
    return math.prod(a.element_shape())


def _scalars(a) -> bool:
    """Whether array ``a`` (inside a kernel) holds scalars."""
    return len(a.element_shape()) == 0


@ti.func
def _component(a: ti.template(), I, c: ti.template()):
    """Component ``c`` of element ``I`` of ``a`` (the element itself for scalars)."""
    e = a[I]
    if ti.static(_scalars(a)):
        return e
    else:
        return e[c]


@ti.func
def _value(a: ti.template(), k):
    """Value number ``k`` of ``a`` in row-major order (element components unrolled)."""
    C = ti.static(_width(a))
    e = a[arrays.unravel(k // C, a)]
    if ti.static(_scalars(a)):
        return e
    else:
        return e[k % C]


@ti.func
def _matching(b: ti.template(), I, k, c: ti.template(), same: ti.template()):
    """The value of ``b`` matching component ``c`` of element ``I`` (value number ``k``)
    of the array being looped over: by index when both share a layout, else by number."""
    v = 0.0
    if ti.static(same):
        v = _component(b, I, c)
    else:
        v = _value(b, k)
    return v


# --------------------------------------------------------------------------- image losses


@ti.func
def _rho(d, l1: ti.template()):
    if ti.static(l1):
        return ti.abs(d)
    else:
        return d * d


@ti.kernel
def _image_residual(
    pred: Array,
    target: Array,
    mask: Array,
    loss: Array,
    scale: float,
    l1: ti.template(),
    same: ti.template(),
    per_weight: ti.template(),
    n: ti.i32,
):
    # per_weight: values per mask entry (0: no mask); n: elements of pred
    for i in range(n):
        I = arrays.unravel(i, pred)
        k = i * ti.static(_width(pred))  # number of the element's first value
        total = 0.0
        for c in ti.static(range(_width(pred))):
            d = _component(pred, I, c) - _matching(target, I, k + c, c, same)
            r = _rho(d, l1)
            if ti.static(per_weight):
                r *= _value(mask, (k + c) // per_weight)
            total += r
        loss[None] += scale * total


def image_loss(pred, target, loss, kind: str = "l2", mask=None, weight: float = 1.0) -> None:
    """Add ``weight ·`` the mean over all values of ``|pred − target|²`` (``"l2"``) or
    ``|pred − target|`` (``"l1"``) to ``loss``; ``mask`` weighs pixels (or values)."""
    if kind not in ("l1", "l2"):
        raise UserError(f"unknown image loss {kind!r}; choose 'l1' or 'l2'")
    what = f"{kind} loss"
    pred, target, same = _image_pair(pred, target, what)
    _check_loss(loss)
    w = _check_weight(weight)
    n = _count(pred)
    per_weight = 0
    if mask is not None:
        mask = _array(mask, f"{what}: the mask", flat=True)
        m = _count(mask)
        per_weight = n // m if m and n % m == 0 else 0
        if not 1 <= per_weight <= 4 or _element_shape(mask):
            raise UserError(
                f"{what}: the mask ({_describe(mask)}) must hold scalars, one per pixel or "
                f"per value of the prediction ({_describe(pred)}, {n} values)"
            )
    _image_residual(pred, target, pred if mask is None else mask, loss, w / n,
                    kind == "l1", same, per_weight, _elements(pred))  # fmt: skip


def l1_loss(pred, target, loss, mask=None, weight: float = 1.0) -> None:
    """Mean absolute error; see :func:`image_loss`."""
    image_loss(pred, target, loss, "l1", mask, weight)


def mse_loss(pred, target, loss, mask=None, weight: float = 1.0) -> None:
    """Mean squared error; see :func:`image_loss`."""
    image_loss(pred, target, loss, "l2", mask, weight)


@ti.kernel
def _clear(a: Array):
    for i in range(a.shape[0]):
        a[i] = 0.0  # recorded on a Tape, its reverse pass zeroes a's gradient


@ti.kernel
def _sum_overlap(a: Array, b: Array, sums: Real, same: ti.template(), n: ti.i32):
    for i in range(n):
        I = arrays.unravel(i, a)
        x, y = a[I], _matching(b, I, i, 0, same)
        sums[0] += x * y
        sums[1] += x + y - x * y


@ti.kernel
def _add_ratio(sums: Real, loss: Array, weight: float, eps: float):
    for _ in range(1):
        loss[None] += weight * (1.0 - sums[0] / (sums[1] + eps))


class SoftIoULoss:
    """``weight · (1 − Σ a·b / (Σ (a + b − a·b) + eps))`` over all pixels of two soft
    silhouettes (scalar values in [0, 1], e.g. the renderer's alpha). Owns the two sums
    (an array with gradients); call it at most once per Tape (they are overwritten)."""

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)
        self.sums = arrays.empty(2, grad=True)  # Σ a·b, Σ (a + b − a·b)

    def forward(self, pred, target, loss, weight: float = 1.0) -> None:
        pred, target, same = _image_pair(pred, target, "soft IoU loss")
        if _element_shape(pred) or _element_shape(target):
            raise UserError(
                f"soft IoU loss: silhouettes must hold scalars, got a {_describe(pred)} and a "
                f"{_describe(target)}; pass the renderer's alpha"
            )
        _check_loss(loss)
        w = _check_weight(weight)
        _clear(self.sums)
        _sum_overlap(pred, target, self.sums, same, _elements(pred))
        _add_ratio(self.sums, loss, w, self.eps)

    __call__ = forward


# --------------------------------------------------------------------------- mesh topology


def mesh_topology(positions, faces, num_vertices=None, num_faces=None):
    """Validate ``positions`` (a (V,) vec3 Taichi ndarray or field, or a (V, 3) float
    array) and a face list ((F, 3) ints, or an (F,) ivec3 ndarray/field) of which the
    first ``num_vertices`` / ``num_faces`` are used (default: all). Returns
    ``(num_vertices, faces)`` with ``faces`` an (num_faces, 3) int64 array."""
    shape = tuple(getattr(positions, "shape", ()))
    if isinstance(positions, (ti.Ndarray, ti.Field)):
        ok = len(shape) == 1 and _element_shape(positions) == (3,)
    else:
        ok = len(shape) == 2 and shape[1] == 3
    if not ok:
        raise UserError(
            f"positions must be a (V,) 3-vector array or (V, 3) values, got {_describe(positions)}"
        )
    V = shape[0] if num_vertices is None else int(num_vertices)
    if not 0 < V <= shape[0]:
        raise UserError(
            f"num_vertices is {num_vertices} but positions hold {shape[0]}; fix the count"
        )
    f = faces.to_numpy() if hasattr(faces, "to_numpy") else np.asarray(faces)
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


# --------------------------------------------------------------------------- mesh kernels


@ti.kernel
def _gather_uniform(positions: Vec3, edges: IVec2, weight_sum: Real, weighted: Vec3):
    for k in range(edges.shape[0]):
        i, j = edges[k][0], edges[k][1]
        weight_sum[i] += 1.0
        weight_sum[j] += 1.0
        weighted[i] += positions[j]
        weighted[j] += positions[i]


@ti.kernel
def _gather_cotangent(positions: Vec3, tris: IVec3, weight_sum: Real, weighted: Vec3):
    for f in range(tris.shape[0]):
        for c in ti.static(range(3)):
            o, i, j = tris[f][c], tris[f][(c + 1) % 3], tris[f][(c + 2) % 3]
            a = positions[i] - positions[o]
            b = positions[j] - positions[o]
            w = a.dot(b) / ti.max(a.cross(b).norm(), _EPS)
            weight_sum[i] += w
            weight_sum[j] += w
            weighted[i] += w * positions[j]
            weighted[j] += w * positions[i]


@ti.kernel
def _add_laplacian(positions: Vec3, weight_sum: Real, weighted: Vec3, loss: Array, scale: float):
    for i in range(weight_sum.shape[0]):
        s = weight_sum[i]
        valid = ti.abs(s) > _EPS
        inv = ti.select(valid, 1.0 / ti.select(valid, s, 1.0), 0.0)
        d = weighted[i] * inv - positions[i]
        loss[None] += scale * ti.select(valid, 1.0, 0.0) * d.norm_sqr()


@ti.kernel
def _add_edges(positions: Vec3, edges: IVec2, loss: Array, scale: float, target: float):
    for k in range(edges.shape[0]):
        d = positions[edges[k][0]] - positions[edges[k][1]]
        r = d.norm_sqr()  # target 0: |e|², no sqrt (its gradient is singular at 0)
        if target != 0.0:
            r = (d.norm() - target) ** 2
        loss[None] += scale * r


@ti.kernel
def _add_pairs(positions: Vec3, pairs: IVec4, loss: Array, scale: float):
    for k in range(pairs.shape[0]):
        q = pairs[k]
        x0 = positions[q[0]]
        e = positions[q[1]] - x0
        n0 = e.cross(positions[q[2]] - x0)
        n1 = (positions[q[3]] - x0).cross(e)
        length = ti.sqrt(ti.max(n0.norm_sqr() * n1.norm_sqr(), _EPS * _EPS))
        loss[None] += scale * (1.0 - n0.dot(n1) / length)


class _MeshRegularizer:
    """Common construction: validated counts, the face list as a NumPy array, and index
    rows as int32 vector ndarrays."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None):
        backend.ensure_init()
        V, f = mesh_topology(positions, faces, num_vertices, num_faces)
        self.positions = _array(positions, "positions")
        self.num_vertices, self.faces_np = V, f

    @staticmethod
    def _rows(rows: np.ndarray):
        return arrays.from_numpy(rows.astype(np.int32), dtype=ti.i32)


class LaplacianLoss(_MeshRegularizer):
    """``mean_i ||Σ_j w_ij x_j / Σ_j w_ij − x_i||²`` over the ``num_vertices`` vertices
    (``kind="uniform"``: w = 1; ``"cotangent"``: w = cot α + cot β of the current mesh).
    Vertices without neighbours (or with Σ w = 0) contribute 0. Owns the sums Σ w and
    Σ w x (arrays with gradients); call it at most once per Tape."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None, kind="uniform"):
        if kind not in ("uniform", "cotangent"):
            raise UserError(f"unknown Laplacian {kind!r}; choose 'uniform' or 'cotangent'")
        super().__init__(positions, faces, num_vertices, num_faces)
        self.kind = kind
        V = self.num_vertices
        self.weight_sum = arrays.empty(V, grad=True)
        self.weighted = arrays.empty(V, 3, grad=True)
        rows = unique_edges(self.faces_np) if kind == "uniform" else self.faces_np
        self.rows = self._rows(rows)

    def forward(self, loss, weight: float = 1.0) -> None:
        _check_loss(loss)
        w = _check_weight(weight)
        _clear(self.weight_sum)  # a kernel, so that its reverse pass clears the gradient
        _clear(self.weighted)
        gather = _gather_uniform if self.kind == "uniform" else _gather_cotangent
        gather(self.positions, self.rows, self.weight_sum, self.weighted)
        _add_laplacian(self.positions, self.weight_sum, self.weighted, loss, w / self.num_vertices)

    __call__ = forward


class EdgeLengthLoss(_MeshRegularizer):
    """``mean_edges (|x_i − x_j| − target_length)²`` over the unique edges."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None, target_length=0.0):
        super().__init__(positions, faces, num_vertices, num_faces)
        self.target_length = float(target_length)
        if not (math.isfinite(self.target_length) and self.target_length >= 0):
            raise UserError(f"target_length is {target_length}; give a finite length ≥ 0")
        e = unique_edges(self.faces_np)
        self.edges, self.num_edges = self._rows(e), len(e)

    def forward(self, loss, weight: float = 1.0) -> None:
        _check_loss(loss)
        w = _check_weight(weight)
        _add_edges(self.positions, self.edges, loss, w / self.num_edges, self.target_length)

    __call__ = forward


class NormalConsistencyLoss(_MeshRegularizer):
    """``mean (1 − cos θ)`` over pairs of faces sharing an edge (all pairs at a
    non-manifold edge); 0 when the mesh has no such pair."""

    def __init__(self, positions, faces, num_vertices=None, num_faces=None):
        super().__init__(positions, faces, num_vertices, num_faces)
        p = _face_pairs(self.faces_np)
        self.pairs, self.num_pairs = self._rows(p), len(p)

    def forward(self, loss, weight: float = 1.0) -> None:
        _check_loss(loss)
        w = _check_weight(weight)
        if self.num_pairs:
            _add_pairs(self.positions, self.pairs, loss, w / self.num_pairs)

    __call__ = forward


# --------------------------------------------------------------------------- point sets


@ti.kernel
def _pair_distances(x: Vec3, y: Vec3, partner: Int, count: ti.i32, scale: float, loss: Array):
    """``loss += scale · Σ_i |x_i − y_partner(i)|²``; Taichi derives the adjoint (the
    partners are fixed data: the replayed choice)."""
    for i in range(count):
        loss[None] += scale * (x[i] - y[partner[i]]).norm_sqr()


@ti.kernel
def _surface_distances(
    p: Vec3,
    v: Vec3,
    faces: ti.types.ndarray(dtype=ti.i32, ndim=2),
    face: Int,
    bary: ti.types.ndarray(ndim=2),
    scale: float,
    loss: Array,
):
    """``loss += scale · Σ_i |p_i − Σ_c bary_ic v[faces[face_i, c]]|²`` (recorded face and
    barycentrics held fixed: the envelope theorem makes that the exact derivative)."""
    for i in range(face.shape[0]):
        f = face[i]
        c = bary[i, 0] * v[faces[f, 0]] + bary[i, 1] * v[faces[f, 1]] + bary[i, 2] * v[faces[f, 2]]
        loss[None] += scale * (p[i] - c).norm_sqr()


def _cloud(x, n, what: str):
    """(array, count, fixed) for a point cloud given as a (N,) 3-vector Taichi ndarray of
    which the first ``n`` rows are used (gradients reach it when it has them), or as an
    (N, 3) array (copied into an ndarray without gradient; ``fixed`` is its array, whose
    tree is built once)."""
    from .discrete.kdtree import as_points

    if isinstance(x, ti.Ndarray):
        if _element_shape(x) != (3,) or len(x.shape) != 1:
            raise UserError(f"{what} must be a (N,) 3-vector ndarray or an (N, 3) array")
        count = x.shape[0] if n is None else int(n)
        if not 0 < count <= x.shape[0]:
            raise UserError(f"{what}: count {n} outside [1, {x.shape[0]}]; fix the count")
        return x, count, None
    points = as_points(x, what)
    return arrays.from_numpy(points), len(points), points


def _host(array, count, fixed) -> np.ndarray:
    """The cloud's current points as an (count, 3) array (NaN/inf refused)."""
    from .discrete.kdtree import as_points

    return fixed if fixed is not None else as_points(array.to_numpy()[:count], "point cloud")


class ChamferLoss:
    """``weight · ½ (mean_i min_j |a_i − b_j|² + mean_j min_i |a_i − b_j|²)`` between clouds
    ``a`` and ``b``: each a (N,) 3-vector Taichi ndarray (first ``num_a`` / ``num_b`` rows;
    gradients reach it when it has them) or an (N, 3) array (fixed; its tree is built once).

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
        self.nearest_a = tree_b.query_squared(pa)[1].astype(np.int32)
        self.nearest_b = tree_a.query_squared(pb)[1].astype(np.int32)
        _pair_distances(self.a, self.b, self.nearest_a, self.num_a, sa, loss)
        _pair_distances(self.b, self.a, self.nearest_b, self.num_b, sb, loss)

    @ti.ad.grad_for(forward)
    def backward(self, loss, weight: float = 1.0) -> None:
        """Replay the recorded pairs: ``loss.grad`` into ``a.grad`` and ``b.grad``."""
        sa, sb = self._scales(weight)
        _pair_distances.grad(self.a, self.b, self.nearest_a, self.num_a, sa, loss)
        _pair_distances.grad(self.b, self.a, self.nearest_b, self.num_b, sb, loss)

    def __call__(self, loss, weight: float = 1.0) -> None:
        self.forward(loss, weight)


class PointMeshLoss:
    """``weight · mean_i min_{x ∈ surface} |p_i − x|²``: squared distance of ``points`` (a
    (N,) 3-vector ndarray, first ``num_points`` rows, or a fixed (N, 3) array) to the
    surface of a triangle mesh (``vertices``: a (V,) 3-vector ndarray, first
    ``num_vertices`` rows, or a fixed (V, 3) array; ``faces`` (F, 3)). Gradients reach the
    points and, when they are an ndarray with gradients, the vertices.

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
        self.closest_face = self.closest_face.astype(np.int32)
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
