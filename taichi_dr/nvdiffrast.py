"""nvdiffrast's API on taichi_dr: programs written for nvdiffrast run with one line changed.

    import taichi_dr.nvdiffrast as dr  # instead of: import nvdiffrast.torch as dr

Same names, parameters, defaults, conventions and gradients as nvdiffrast 0.4.0 (0.3.x
calls accepted): ``rasterize`` (instanced and range modes, ``grad_db``), ``DepthPeeler``,
``interpolate`` (broadcast attributes, ``diff_attrs``), ``texture`` and
``texture_construct_mip`` (any channel count, 2D and cube maps, every filter and boundary
mode, ``uv_da``, ``mip_level_bias``, ``max_mip_level``, user mip lists), ``antialias`` and
``antialias_construct_topology_hash``, the contexts ``RasterizeTaichiContext`` (and its
aliases ``RasterizeCudaContext``, ``RasterizeGLContext``), ``get_log_level`` and
``set_log_level``. It runs wherever Taichi runs: the CPU, CUDA (Vulkan and Metal for
forward rendering), under Apache-2.0. Written from a description of nvdiffrast's
documented behaviour; it contains no nvdiffrast code.

Conventions (nvdiffrast's, not taichi_dr's native ones): clip-space ``pos`` (OpenGL);
images [B, H, W, C] with **row 0 at the bottom** (y = −1); ``rast`` = (u, v, z/w,
triangle id + 1) with zeros where empty, u and v the barycentrics of the triangle's
vertices 0 and 1 (clamped: u, v ∈ [0, 1], u + v ≤ 1; z/w ∈ [−1, 1]); ``rast_db`` =
(∂u/∂X, ∂u/∂Y, ∂v/∂X, ∂v/∂Y) per pixel, Y one row up; texture (s, t) = (0, 0) at texel
row 0's left end. A pixel centre exactly on an edge shared by two triangles belongs to
exactly one of them (OpenGL's top-left rule in the y-up image); on a silhouette edge it is
covered only if the edge is a left or top edge.

Devices: the arch taichi_dr was started with, or, at the first call, the one the tensors
imply (CUDA tensors → cuda, else cpu); it never changes afterwards. Tensors on another
device than the arch's are copied there and the outputs copied back. Computation runs in
taichi_dr's float type (float32 unless ``taichi_dr.init(precision="f64")``); outputs
have the dtype of the op's main float input.
"""

import logging
import sys
import types
import weakref

import numpy as np

from . import backend
from .errors import UserError
from .render import antialias as blending
from .render import interpolate as interpolation
from .render import raster, silhouette
from .render import texture as texturing
from .render.arrays import Frame

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "taichi_dr.nvdiffrast needs PyTorch; install it with: pip install 'taichi-dr[torch]'"
    ) from e

from .torch import _with_grad, topology  # noqa: E402  (needs torch)

__all__ = [
    "RasterizeTaichiContext",
    "RasterizeCudaContext",
    "RasterizeGLContext",
    "rasterize",
    "DepthPeeler",
    "interpolate",
    "texture",
    "texture_construct_mip",
    "antialias",
    "antialias_construct_topology_hash",
    "get_log_level",
    "set_log_level",
    "install_alias",
]

NVDIFFRAST_VERSION = "0.4.0"  # the API this module follows


class NvdiffrastError(UserError, RuntimeError):
    """Bad input to an op, in nvdiffrast's words: catch it as ValueError (taichi_dr's
    :class:`UserError`) or as RuntimeError (what nvdiffrast's own checks raise)."""


def _fail(message: str):
    raise NvdiffrastError(message)


# --------------------------------------------------------------------------- logging

_log = logging.getLogger("taichi_dr.nvdiffrast")
_log.propagate = False
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("taichi_dr.nvdiffrast: %(message)s"))
_log.addHandler(_handler)
_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
_log.setLevel(logging.WARNING)


def get_log_level() -> int:
    """The log level: 0 info, 1 warning (default), 2 error, 3 fatal."""
    return _LEVELS.index(_log.level)


def set_log_level(level: int) -> None:
    """Show messages of ``level`` and above: 0 info, 1 warning, 2 error, 3 fatal."""
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 0 <= level <= 3:
        _fail(f"log level must be 0 (info), 1 (warning), 2 (error) or 3 (fatal), got {level!r}")
    _log.setLevel(_LEVELS[int(level)])


_WARNED: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        _log.warning(message)


# --------------------------------------------------------------------------- devices


def _start(device) -> "torch.device":
    """Start Taichi for the first call (cuda for CUDA tensors, else cpu; kept afterwards)
    and return the device the kernels read tensors from."""
    if backend.current_arch() is None:
        arch = "cuda" if device.type == "cuda" else "cpu"
        backend.init(arch)
        _log.info(f"Taichi started on {arch} ({backend.precision()})")
    if backend.current_arch() == "cuda":
        return device if device.type == "cuda" else torch.device("cuda")
    if device.type != "cpu":
        _warn_once(
            "device",
            f"Taichi runs on {backend.current_arch()}: {device.type} tensors are copied to "
            "the host and back each call; call taichi_dr.init('cuda') before the first op "
            "to keep CUDA tensors on the GPU",
        )
    return torch.device("cpu")


def _device(*tensors) -> "torch.device":
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        _fail(f"all input tensors must be on the same device, got {sorted(map(str, devices))}")
    return devices.pop()


def _float(t, name: str, device) -> "torch.Tensor":
    """``t`` as a contiguous tensor of taichi_dr's float type on ``device`` (no copy when it
    already is one)."""
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        _fail(f"{name} must be a float32 tensor, got {t.dtype}")
    dtype = torch.float64 if backend.precision() == "f64" else torch.float32
    return t.to(device=device, dtype=dtype).contiguous()


def _indices(t, name: str, columns: int, device) -> "torch.Tensor":
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex():
        _fail(f"{name} must be an int32 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] != columns:
        _fail(f"{name} must have shape [>0, {columns}], got {list(t.shape)}")
    return t.to(device=device, dtype=torch.int32).contiguous()


class _PerTensor:
    """Values remembered per tensor object and version (weakly: forgotten with the tensor),
    so that work done for a tensor is not redone while it is unchanged."""

    def __init__(self):
        self.entries = {}

    def get(self, t, key=()):
        seen = self.entries.get(id(t))
        if seen is not None and seen[0]() is t and seen[1] == (t._version, key):
            return seen[2]
        return None

    def put(self, t, value, key=()):
        slot = id(t)
        forget = weakref.ref(t, lambda _: self.entries.pop(slot, None))
        self.entries[slot] = (forget, (t._version, key), value)
        return value


_CHECKED = _PerTensor()  # index tensors whose range was checked, by vertex count
_TOPOLOGY = _PerTensor()  # index tensor → its topology hash, when antialias built one
_IDS = _PerTensor()  # rast tensor → its triangle ids (int32, −1 empty), from rasterize


def _check_vertex_indices(tri: "torch.Tensor", n_vertices: int, what: str) -> None:
    """Every index of ``tri`` lies in 0..n_vertices − 1 (checked once per tensor version)."""
    if _CHECKED.get(tri, n_vertices):
        return
    lo, hi = torch.aminmax(tri)
    if int(lo) < 0 or int(hi) >= n_vertices:
        _fail(f"tri indexes vertices {int(lo)}..{int(hi)}, but {what} has {n_vertices} vertices")
    _CHECKED.put(tri, True, n_vertices)


# --------------------------------------------------------------------------- contexts


def _as_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


class RasterizeTaichiContext:
    """Rasterizer state for one device: its work buffers and the active depth peeler.

    ``device`` (``torch.device``, str or int; None: follow the tensors) is recorded for
    compatibility; the tensors passed to the ops decide where they run (see the module
    docstring). Needs no CUDA and no OpenGL."""

    def __init__(self, device=None):
        self.device = _as_device(device)
        self.output_db = True
        self.active_depth_peeler = None
        self._raster = None
        self._raster_key = None

    def _rasterizer(self) -> raster.Rasterizer:
        key = (backend.current_arch(), backend.precision())
        if key != self._raster_key:  # a restarted Taichi invalidated the old buffers
            self._raster, self._raster_key = raster.Rasterizer(), key
        return self._raster


class RasterizeCudaContext(RasterizeTaichiContext):
    """nvdiffrast's CUDA context name: the same Taichi rasterizer (no CUDA needed)."""


class RasterizeGLContext(RasterizeTaichiContext):
    """nvdiffrast's OpenGL context name (0.3.x): the same Taichi rasterizer, no OpenGL.
    ``output_db=False`` makes ``rasterize`` return an empty [B, H, W, 0] ``rast_db`` (and
    ignore ``grad_db``), as 0.3.x did; ``mode`` "automatic" or "manual" changes nothing
    here (``set_context`` and ``release_context`` do nothing)."""

    def __init__(self, output_db=True, mode="automatic", device=None):
        if mode not in ("automatic", "manual"):
            _fail(f"invalid OpenGL context mode {mode!r}; choose 'automatic' or 'manual'")
        super().__init__(device)
        self.output_db = bool(output_db)
        self.mode = mode

    def set_context(self):
        """Nothing to do: there is no OpenGL context."""

    def release_context(self):
        """Nothing to do: there is no OpenGL context."""


def _check_context(glctx) -> None:
    if not isinstance(glctx, RasterizeTaichiContext):
        _fail(
            "glctx must be a RasterizeTaichiContext, RasterizeCudaContext or "
            f"RasterizeGLContext, got {type(glctx).__name__}"
        )


# --------------------------------------------------------------------------- rasterize

_FLIP = (1.0, -1.0, 1.0, 1.0)  # clip y negated: taichi_dr's row 0 (top) is nvdiffrast's bottom


class _Geometry:
    """Validated ``pos``/``tri``/``ranges`` of one call: ``clip`` flat (rows, 4) with y
    negated (differentiable), ``tri`` and ``ranges`` int32, ``views`` B, ``stride`` (V per
    view in instanced mode, 0 in range mode) and the dtype and device of ``pos``."""

    def __init__(self, pos, tri, ranges, views=None):
        if not isinstance(pos, torch.Tensor):
            _fail(f"pos must be a torch.Tensor, got {type(pos).__name__}")
        self.instanced = pos.dim() == 3
        if self.instanced:
            if pos.shape[0] == 0 or pos.shape[1] == 0 or pos.shape[2] != 4:
                _fail(f"instance mode - pos must have shape [>0, >0, 4], got {list(pos.shape)}")
        elif pos.dim() == 2:
            if pos.shape[0] == 0 or pos.shape[1] != 4:
                _fail(f"range mode - pos must have shape [>0, 4], got {list(pos.shape)}")
        else:
            _fail(f"pos must have shape [>0, >0, 4] or [>0, 4], got {list(pos.shape)}")
        self.device, self.dtype = pos.device, pos.dtype
        work = _start(_device(pos, tri if isinstance(tri, torch.Tensor) else None))
        clip = _float(pos, "pos", work)
        self.tri = _indices(tri, "tri", 3, work)
        F = self.tri.shape[0]
        V = pos.shape[-2]
        _check_vertex_indices(tri, V, "pos")
        if self.instanced:
            self.views, self.stride = pos.shape[0], V
            self.ranges = torch.tensor([[0, F]], dtype=torch.int32).expand(self.views, 2)
        elif views is not None:  # antialias in range mode: every face may be in any view
            self.views, self.stride = views, 0
            self.ranges = torch.tensor([[0, F]], dtype=torch.int32).expand(views, 2)
        else:
            if not isinstance(ranges, torch.Tensor) or ranges.dim() != 2 or ranges.shape[1] != 2:
                _fail(
                    "range mode - ranges must have shape [>0, 2], got "
                    + (str(list(ranges.shape)) if isinstance(ranges, torch.Tensor) else "None")
                )
            if ranges.shape[0] == 0 or ranges.is_floating_point():
                _fail("range mode - ranges must have shape [>0, 2] and an integer dtype")
            r = ranges.detach().to("cpu", torch.int64)
            if (r < 0).any() or (r[:, 0] + r[:, 1] > F).any():
                _fail(f"range mode - ranges must lie within the {F} triangles, got {r.tolist()}")
            self.views, self.stride, self.ranges = r.shape[0], 0, r.to(torch.int32)
        self.ranges = self.ranges.to(work).contiguous()
        flip = torch.tensor(_FLIP, dtype=clip.dtype, device=work)
        self.clip = (clip * flip).reshape(-1, 4)
        self.work = work


class _Rast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, clip, tri, ids, frame, stride, with_db, grad_db):
        ctx.set_materialize_grads(False)  # an unused rast_db sends no gradient
        rast = clip.new_empty((frame.pixels, 4))
        db = clip.new_empty((frame.pixels, 4)) if with_db else None
        interpolation.rasterized(clip.detach(), tri, ids, frame, stride, rast, db)
        ctx.save_for_backward(clip, tri, ids)
        ctx.frame, ctx.stride, ctx.grad_db = frame, stride, with_db and grad_db
        if db is None:
            return rast, rast.new_empty((frame.pixels, 0))
        return rast, db

    @staticmethod
    def backward(ctx, g_rast, g_db):
        backend.require_autodiff()  # vulkan / metal: forward only
        clip, tri, ids = ctx.saved_tensors
        c = _with_grad(clip)
        n = ctx.frame.pixels
        if g_rast is None:
            g_rast = clip.new_zeros((n, 4))
        rast = _with_grad(clip.new_empty((n, 4)), g_rast)
        use_db = ctx.grad_db and g_db is not None
        db = _with_grad(clip.new_empty((n, 4)), g_db) if use_db else None
        interpolation.rasterized(c, tri, ids, ctx.frame, ctx.stride, rast, db, backward=True)
        return c.grad, None, None, None, None, None, None


def _resolution(resolution) -> tuple:
    try:
        H, W = (int(x) for x in resolution)
    except (TypeError, ValueError):
        _fail(f"resolution must be [>0, >0], got {resolution!r}")
    if H <= 0 or W <= 0:
        _fail(f"resolution must be [>0, >0], got {[H, W]}")
    return H, W


def _rasterize(glctx, pos, tri, resolution, ranges, grad_db, peel):
    if grad_db is not True and grad_db is not False:
        _fail(f"grad_db must be True or False, got {grad_db!r}")
    H, W = _resolution(resolution)
    g = _Geometry(pos, tri, ranges)
    frame = Frame(g.views, H, W)
    ids = torch.empty(frame.pixels, dtype=torch.int32, device=g.work)
    glctx._rasterizer().forward(
        g.clip.detach(), g.tri, g.ranges, frame, g.stride, peel=peel, triangle_id=ids
    )
    rast, db = _Rast.apply(g.clip, g.tri, ids, frame, g.stride, glctx.output_db, grad_db)
    rast = rast.reshape(frame.shape(4)).to(device=g.device, dtype=g.dtype)
    db = db.reshape(frame.shape(db.shape[1])).to(device=g.device, dtype=g.dtype)
    _IDS.put(rast, ids)  # antialias reads them instead of decoding rast again
    return rast, db


def rasterize(glctx, pos, tri, resolution, ranges=None, grad_db=True):
    """Rasterize triangles into [B, H, W] pixels: returns ``(rast, rast_db)``.

    ``pos``: clip-space vertices [B, V, 4] (instanced mode: every image draws all of
    ``tri`` with its own vertices) or [V, 4] (range mode: image b draws
    ``tri[start_b : start_b + count_b]`` for ``ranges`` [B, 2] = (start, count)).
    ``tri`` [T, 3] int32 (int64 accepted) vertex indices; ``resolution`` (height, width).
    ``rast`` [B, H, W, 4] = (u, v, z/w, triangle id + 1), 0 where empty; ``rast_db``
    [B, H, W, 4] = (∂u/∂X, ∂u/∂Y, ∂v/∂X, ∂v/∂Y). Row 0 is the bottom row. Gradients reach
    ``pos`` (x, y, w) from u, v and, with ``grad_db=True``, from ``rast_db``."""
    _check_context(glctx)
    if glctx.active_depth_peeler is not None:
        raise RuntimeError(
            "cannot call rasterize() while a DepthPeeler is active on this context; "
            "use its rasterize_next_layer() or leave its with-block first"
        )
    return _rasterize(glctx, pos, tri, resolution, ranges, grad_db, peel=False)


class DepthPeeler:
    """Depth peeling: ``with DepthPeeler(glctx, pos, tri, resolution) as peeler:`` then
    ``peeler.rasterize_next_layer()`` → ``(rast, rast_db)`` of the nearest surface, the one
    behind it, and so on (each layer keeps only surface points strictly deeper than the
    previous layer at that pixel). Arguments as :func:`rasterize`. The context is reserved
    while the peeler is active; a peeler cannot be entered twice."""

    def __init__(self, glctx, pos, tri, resolution, ranges=None, grad_db=True):
        _check_context(glctx)
        self.glctx = glctx
        self.args = (pos, tri, resolution, ranges, grad_db)
        self.layer = None  # None: not entered yet; -1: left

    def __enter__(self):
        if self.layer is not None:
            raise RuntimeError("a DepthPeeler cannot be entered again; create a new one")
        if self.glctx.active_depth_peeler is not None:
            raise RuntimeError("another DepthPeeler is already active on this context")
        self.glctx.active_depth_peeler = self
        self.layer = 0
        return self

    def __exit__(self, *exc):
        if self.glctx.active_depth_peeler is self:
            self.glctx.active_depth_peeler = None
        self.layer = -1
        return False

    def rasterize_next_layer(self):
        """The next layer's ``(rast, rast_db)``; empty pixels once the surfaces run out."""
        if self.layer is None or self.layer < 0:
            raise RuntimeError("rasterize_next_layer() needs an active DepthPeeler (a with-block)")
        pos, tri, resolution, ranges, grad_db = self.args
        peel = "depth" if self.layer > 0 else False
        out = _rasterize(self.glctx, pos, tri, resolution, ranges, grad_db, peel=peel)
        self.layer += 1
        return out


# --------------------------------------------------------------------------- interpolate


def _rast_frame(rast, name="rast") -> Frame:
    if not isinstance(rast, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(rast).__name__}")
    if rast.dim() != 4 or rast.shape[3] != 4 or 0 in rast.shape:
        _fail(f"{name} must have shape [>0, >0, >0, 4], got {list(rast.shape)}")
    return Frame(*rast.shape[:3])


def _selected(diff_attrs, n_attrs: int) -> list:
    if diff_attrs is None:
        return []
    if isinstance(diff_attrs, str):
        if diff_attrs != "all":
            _fail(f"diff_attrs must be 'all' or a list of attribute indices, got {diff_attrs!r}")
        return list(range(n_attrs))
    try:
        chosen = [int(k) for k in diff_attrs]
    except (TypeError, ValueError):
        _fail(f"diff_attrs must be 'all' or a list of attribute indices, got {diff_attrs!r}")
    for k in chosen:
        if not -n_attrs <= k < n_attrs:
            _fail(f"diff_attrs index {k} is out of range for {n_attrs} attributes")
    return [k % n_attrs for k in chosen]


class _Interpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attr, rast, db, tri, selected, frame, stride):
        ctx.set_materialize_grads(False)
        n = frame.pixels
        out = attr.new_empty((n, attr.shape[1]))
        out_da = attr.new_empty((n, 2 * len(selected)))
        interpolation.attributes(
            attr.detach(), stride, tri, rast.detach(), db.detach(), frame, selected, out, out_da
        )
        ctx.save_for_backward(attr, rast, db, tri, selected)
        ctx.frame, ctx.stride = frame, stride
        return out, out_da

    @staticmethod
    def backward(ctx, g_out, g_da):
        backend.require_autodiff()  # vulkan / metal: forward only
        attr, rast, db, tri, selected = ctx.saved_tensors
        n = ctx.frame.pixels
        g_attr = torch.zeros_like(attr) if ctx.needs_input_grad[0] else None
        g_out = attr.new_zeros((n, attr.shape[1])) if g_out is None else g_out
        g_rast = rast.new_empty((n, 4))
        use_da = len(selected) > 0 and g_da is not None
        g_db = rast.new_zeros((n, 4)) if use_da else None
        g_da = g_da.contiguous() if use_da else g_out
        selected = selected if use_da else selected[:0]
        interpolation.attributes_backward(
            attr.detach(), ctx.stride, tri, rast.detach(), db.detach(), ctx.frame, selected,
            g_out.contiguous(), g_da, g_attr, g_rast, g_rast if g_db is None else g_db,
        )  # fmt: skip
        return g_attr, g_rast, g_db, None, None, None, None


def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
    """Interpolate vertex attributes at every pixel of ``rast``: returns ``(out, out_da)``.

    ``attr``: [V, A] (shared by every image), or [B, V, A] with B the images of ``rast``
    or 1 (broadcast). ``tri`` [T, 3] int32: the triangles ``rast`` was rasterized with, or
    another index tensor with the same rows. ``out`` [B, H, W, A] = u·a₀ + v·a₁ +
    (1 − u − v)·a₂, zeros where empty. With ``rast_db`` and ``diff_attrs`` ('all' or a list
    of attribute indices, negative counting from the end), ``out_da`` [B, H, W, 2n] holds
    (∂a/∂X, ∂a/∂Y) of each selected attribute; else it is an empty [B, H, W, 0] tensor.
    Gradients reach ``attr``, ``rast`` (u, v) and ``rast_db``."""
    frame = _rast_frame(rast)
    if not isinstance(attr, torch.Tensor):
        _fail(f"attr must be a torch.Tensor, got {type(attr).__name__}")
    if attr.dim() == 3:
        if attr.shape[0] not in (1, frame.views) or 0 in attr.shape:
            _fail(
                f"attr must have shape [{frame.views} or 1, >0, >0] (minibatch size of rast "
                f"or 1), got {list(attr.shape)}"
            )
    elif attr.dim() != 2 or 0 in attr.shape:
        _fail(f"attr must have shape [>0, >0, >0] or [>0, >0], got {list(attr.shape)}")
    V, A = attr.shape[-2:]
    stride = V if attr.dim() == 3 and attr.shape[0] > 1 else 0
    work = _start(_device(attr, rast, rast_db, tri if isinstance(tri, torch.Tensor) else None))
    tri32 = _indices(tri, "tri", 3, work)
    _check_vertex_indices(tri, V, "attr")
    selected = _selected(diff_attrs, A)
    if selected and rast_db is None:
        _fail("diff_attrs needs rast_db: pass the rast_db that rasterize() returned")
    a = _float(attr, "attr", work).reshape(-1, A)
    r = _float(rast, "rast", work).reshape(-1, 4)
    if selected:
        if not isinstance(rast_db, torch.Tensor) or tuple(rast_db.shape) != frame.shape(4):
            _fail(
                f"rast_db must have shape {list(frame.shape(4))} (as rast), got "
                f"{list(getattr(rast_db, 'shape', []))}"
            )
        db = _float(rast_db, "rast_db", work).reshape(-1, 4)
    else:
        db = r.new_zeros((1, 4))
    sel = torch.tensor(selected, dtype=torch.int32, device=work)
    out, out_da = _Interpolate.apply(a, r, db, tri32, sel, frame, stride)
    out = out.reshape(frame.shape(A)).to(device=attr.device, dtype=attr.dtype)
    out_da = out_da.reshape(frame.shape(2 * len(selected))).to(attr.device, attr.dtype)
    return out, out_da


# --------------------------------------------------------------------------- texture

_MIP_FILTERS = ("linear-mipmap-nearest", "linear-mipmap-linear")


class TextureMip:
    """The mipmap stack of a texture (``texture_construct_mip``): pass it as ``mip=`` while
    the texture is unchanged. Gradients of its levels reach the texture through the box
    filter (the stack is a function of the texture)."""

    def __init__(self, mips, table, shape, cube):
        self.mips, self.table, self.shape, self.cube = mips, table, tuple(shape), cube


class _BuildMips(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tex, table, faces, images):
        mips = tex.new_empty((max(images * texturing.mip_count(table, faces), 1), tex.shape[1]))
        texturing.build_mips(tex.detach(), mips, table, faces, images)
        ctx.table, ctx.faces, ctx.images = table, faces, images
        ctx.save_for_backward(tex)
        return mips

    @staticmethod
    def backward(ctx, g_mips):
        backend.require_autodiff()  # vulkan / metal: forward only
        (tex,) = ctx.saved_tensors
        t = _with_grad(tex)
        m = _with_grad(tex.new_empty(g_mips.shape), g_mips)
        texturing.build_mips(t, m, ctx.table, ctx.faces, ctx.images, backward=True)
        return t.grad, None, None, None


class _Sample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tex, mips, uv, uv_da, bias, stack, modes, pixels_per_view, fold):
        stack = stack._replace(tex=tex.detach(), mips=mips.detach())
        d = [None if x is None else x.detach() for x in (uv, uv_da, bias)]
        n = uv.shape[0]
        out = uv.new_empty((n, tex.shape[1]))
        addr = torch.empty(n * texturing.TAPS, dtype=torch.int32, device=uv.device)
        weights = uv.new_empty((n * texturing.TAPS, 4))
        texturing.sample_stack(stack, *d, *modes, pixels_per_view, addr, weights, out)
        ctx.save_for_backward(tex, mips, uv, uv_da, bias, addr, weights)
        ctx.stack, ctx.modes, ctx.fold = stack, modes, fold
        return out

    @staticmethod
    def backward(ctx, g_out):
        backend.require_autodiff()  # vulkan / metal: forward only
        tex, mips, uv, uv_da, bias, addr, weights = ctx.saved_tensors
        need = ctx.needs_input_grad
        stack = ctx.stack._replace(tex=tex.detach(), mips=mips.detach())
        g_tex = torch.zeros_like(tex) if need[0] or ctx.fold else None
        g_mips = torch.zeros_like(mips) if need[1] or ctx.fold else None
        g_uv = torch.zeros_like(uv) if need[2] else None
        g_da = torch.zeros_like(uv_da) if uv_da is not None and need[3] else None
        g_bias = torch.zeros_like(bias) if bias is not None and need[4] else None
        texturing.sample_backward(
            stack, uv.detach(), None if uv_da is None else uv_da.detach(),
            None if bias is None else bias.detach(), *ctx.modes, addr, weights,
            g_out.contiguous(), uv.new_empty((uv.shape[0], 3)),
            (g_tex, g_mips, g_uv, g_da, g_bias),
        )  # fmt: skip
        if ctx.fold and g_mips is not None and len(ctx.stack.table) > 1:
            t, m = _with_grad(tex, g_tex), _with_grad(mips, g_mips)
            texturing.build_mips(t, m, stack.table, stack.faces, stack.images, backward=True)
            g_tex = t.grad
        return g_tex, (g_mips if need[1] else None), g_uv, g_da, g_bias, None, None, None, None


def _texture_shape(tex, cube: bool) -> tuple:
    """(images Bt, faces, h, w, C) of a validated texture tensor."""
    if not isinstance(tex, torch.Tensor):
        _fail(f"tex must be a torch.Tensor, got {type(tex).__name__}")
    if cube:
        if tex.dim() != 5 or tex.shape[1] != 6 or tex.shape[2] != tex.shape[3] or 0 in tex.shape:
            _fail(f"cube map tex must have shape [>0, 6, >0, >0, >0] with square faces, got "
                  f"{list(tex.shape)}")  # fmt: skip
        return tex.shape[0], 6, tex.shape[2], tex.shape[3], tex.shape[4]
    if tex.dim() == 5:
        _fail("a cube map tex [B, 6, s, s, C] needs boundary_mode='cube'")
    if tex.dim() != 4 or 0 in tex.shape:
        _fail(f"tex must have shape [>0, >0, >0, >0], got {list(tex.shape)}")
    return tex.shape[0], 1, tex.shape[1], tex.shape[2], tex.shape[3]


def _mip_sizes(h: int, w: int, max_mip_level) -> list:
    if max_mip_level is not None and (isinstance(max_mip_level, bool) or int(max_mip_level) < 0):
        _fail(f"max_mip_level must be None or >= 0, got {max_mip_level!r}")
    try:
        return texturing.mip_sizes(h, w, None if max_mip_level is None else int(max_mip_level))
    except UserError as e:
        _fail(str(e))


def texture_construct_mip(tex, max_mip_level=None, cube_mode=False):
    """The mipmap stack of ``tex`` ([B, h, w, C], or [B, 6, s, s, C] with
    ``cube_mode=True``) for reuse in :func:`texture` (``mip=``) while ``tex`` is unchanged.
    Levels halve down to 1×1, or to ``max_mip_level``; an odd side that would have to be
    halved is an error."""
    images, faces, h, w, C = _texture_shape(tex, bool(cube_mode))
    table = texturing.mip_table(_mip_sizes(h, w, max_mip_level), faces)
    work = _start(tex.device)
    t = _float(tex, "tex", work).reshape(-1, C)
    with torch.no_grad():
        mips = _BuildMips.apply(t, table, faces, images)
    return TextureMip(mips, table, tex.shape, bool(cube_mode))


def _user_mips(mip, tex_shape, images, faces, C, work) -> tuple:
    """(mips (images·M, C) concatenated with gradients to the list, table) of a user list
    of levels 1..k."""
    h, w = tex_shape
    sizes = [(h, w)]
    levels = []
    for k, m in enumerate(mip, start=1):
        expect = (max(sizes[-1][0] // 2, 1), max(sizes[-1][1] // 2, 1))
        shape = (images, *((6,) if faces == 6 else ()), *expect, C)
        if not isinstance(m, torch.Tensor) or tuple(m.shape) != shape:
            _fail(f"mip level {k} must have shape {list(shape)}, got "
                  f"{list(getattr(m, 'shape', [type(m).__name__]))}")  # fmt: skip
        sizes.append(expect)
        levels.append(_float(m, f"mip level {k}", work).reshape(images, -1, C))
    _mip_sizes(h, w, len(sizes) - 1)  # the odd-side rule holds for the list too
    mips = torch.cat(levels, dim=1).reshape(-1, C)
    return mips, texturing.mip_table(sizes, faces)


def texture(
    tex,
    uv,
    uv_da=None,
    mip_level_bias=None,
    mip=None,
    filter_mode="auto",
    boundary_mode="wrap",
    max_mip_level=None,
):
    """Sample textures at per-pixel coordinates: returns [B, H, W, C].

    ``tex``: [Bt, h, w, C] (Bt = B or 1, any C; texel row 0 at t = 0) or, with
    ``boundary_mode='cube'``, a cube map [Bt, 6, s, s, C]. ``uv`` [B, H, W, 2] (s, t), or
    [B, H, W, 3] directions for cube maps. ``uv_da`` [B, H, W, 4] (∂s/∂X, ∂s/∂Y, ∂t/∂X,
    ∂t/∂Y) or [B, H, W, 6] for cube maps — what ``interpolate(..., diff_attrs='all')``
    gives — and/or ``mip_level_bias`` [B, H, W] choose the mip level
    ℓ = log2 σ_max(texel-space Jacobian) + bias. ``filter_mode``: 'nearest', 'linear',
    'linear-mipmap-nearest', 'linear-mipmap-linear' or 'auto' (mipmapped when uv_da or a
    bias is given). ``boundary_mode``: 'wrap', 'clamp', 'zero' or 'cube'. ``mip``: a
    :func:`texture_construct_mip` result, or a list of levels 1..k (receiving their own
    gradients). ``max_mip_level``: the last level built. Gradients reach ``tex``, ``uv``
    (not with 'nearest'), ``uv_da`` and ``mip_level_bias`` (linear-mipmap-linear) and a
    mip list."""
    if filter_mode not in ("auto", *texturing.NV_FILTERS):
        _fail(
            f"invalid filter_mode {filter_mode!r}; choose auto, {', '.join(texturing.NV_FILTERS)}"
        )
    if boundary_mode not in texturing.BOUNDARIES:
        _fail(f"invalid boundary_mode {boundary_mode!r}; choose {', '.join(texturing.BOUNDARIES)}")
    cube = boundary_mode == "cube"
    if not cube and isinstance(tex, torch.Tensor) and tex.dim() == 5:
        _fail("cube map textures [B, 6, s, s, C] need boundary_mode='cube'")
    images, faces, h, w, C = _texture_shape(tex, cube)
    if filter_mode == "auto":
        mipmapped = uv_da is not None or mip_level_bias is not None
        filter_mode = "linear-mipmap-linear" if mipmapped else "linear"
    if filter_mode in _MIP_FILTERS and uv_da is None and mip_level_bias is None:
        _fail(f"filter_mode {filter_mode!r} needs uv_da and/or mip_level_bias")
    if filter_mode in _MIP_FILTERS and max_mip_level == 0:
        filter_mode = "linear"
    K = 3 if cube else 2
    if not isinstance(uv, torch.Tensor) or uv.dim() != 4 or uv.shape[3] != K or 0 in uv.shape:
        _fail(f"uv must have shape [>0, >0, >0, {K}], got {list(getattr(uv, 'shape', []))}")
    frame = Frame(*uv.shape[:3])
    if images not in (1, frame.views):
        _fail(f"tex minibatch size must be 1 or {frame.views} (that of uv), got {images}")
    mipmapped = filter_mode in _MIP_FILTERS
    if uv_da is not None and mipmapped and tuple(uv_da.shape) != frame.shape(2 * K):
        _fail(f"uv_da must have shape {list(frame.shape(2 * K))}, got {list(uv_da.shape)}")
    bias = mip_level_bias
    if bias is not None and mipmapped and tuple(bias.shape) != frame.shape():
        _fail(f"mip_level_bias must have shape {list(frame.shape())}, got {list(bias.shape)}")
    work = _start(_device(tex, uv, uv_da, bias))
    t = _float(tex, "tex", work).reshape(-1, C)
    u = _float(uv, "uv", work).reshape(-1, K)
    da = (
        _float(uv_da, "uv_da", work).reshape(-1, 2 * K) if uv_da is not None and mipmapped else None
    )
    bias = (
        _float(bias, "mip_level_bias", work).reshape(-1) if bias is not None and mipmapped else None
    )
    fold = False
    if not mipmapped:
        table = texturing.mip_table([(h, w)], faces)
        mips = t.new_zeros((1, C))
    elif mip is None:
        table = texturing.mip_table(_mip_sizes(h, w, max_mip_level), faces)
        mips = _BuildMips.apply(t, table, faces, images)
    elif isinstance(mip, TextureMip):
        if mip.shape != tuple(tex.shape) or mip.cube != cube:
            _fail(f"mip was built for a {'cube map ' if mip.cube else ''}texture of shape "
                  f"{list(mip.shape)}, not {list(tex.shape)}; rebuild it")  # fmt: skip
        table, mips, fold = mip.table, mip.mips.to(device=work, dtype=t.dtype), True
    elif isinstance(mip, list | tuple):
        mips, table = _user_mips(mip, (h, w), images, faces, C, work)
    else:
        _fail(f"mip must be a texture_construct_mip() result or a list of tensors, got "
              f"{type(mip).__name__}")  # fmt: skip
    if len(table) == 1 and mips.shape[0] == 0:
        mips = t.new_zeros((1, C))
    levels = torch.as_tensor(table, device=work)
    stack = texturing.Stack(None, None, levels, table, faces, images)
    modes = (filter_mode, boundary_mode)
    out = _Sample.apply(t, mips, u, da, bias, stack, modes, frame.height * frame.width, fold)
    return out.reshape(frame.shape(C)).to(device=tex.device, dtype=tex.dtype)


# --------------------------------------------------------------------------- antialias


class TopologyHash:
    """The triangle across each edge, by shared vertex indices
    (``antialias_construct_topology_hash``): ``neighbours`` [T, 3] int32, −1 on a boundary."""

    def __init__(self, neighbours, n_triangles):
        self.neighbours, self.n_triangles = neighbours, n_triangles


def antialias_construct_topology_hash(tri):
    """The edge topology of ``tri`` [T, 3] for :func:`antialias` (compute once per mesh).
    Triangles are neighbours when they share the two vertex *indices* of an edge."""
    t = _indices(tri, "tri", 3, tri.device if isinstance(tri, torch.Tensor) else "cpu")
    return TopologyHash(topology(t), t.shape[0])


class _Antialias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, color, clip, edges, frame, boost):
        out = color.detach().clone()
        blending.blend(color.detach(), edges, clip.detach(), frame, out)
        ctx.save_for_backward(color, clip, edges)
        ctx.frame, ctx.boost = frame, boost
        return out

    @staticmethod
    def backward(ctx, g_out):
        backend.require_autodiff()  # vulkan / metal: forward only
        color, clip, edges = ctx.saved_tensors
        g_out = g_out.contiguous()
        c, k = _with_grad(color, g_out.clone()), _with_grad(clip)  # out = color + blend
        out = _with_grad(torch.empty_like(color), g_out)
        blending.blend(c, edges, k, ctx.frame, out, backward=True)
        return c.grad, k.grad * ctx.boost, None, None, None


def antialias(color, rast, pos, tri, topology_hash=None, pos_gradient_boost=1.0):
    """Blend the pixels straddling silhouette edges by the edges' coverage: returns
    [B, H, W, C] — the image barely changes; its gradient reaches ``pos`` (times
    ``pos_gradient_boost``) at silhouettes, as well as ``color``.

    ``color`` [B, H, W, C] (the final image: antialias after masking and compositing),
    ``rast`` from :func:`rasterize`, ``pos`` and ``tri`` as rasterized (mode from ``pos``'s
    rank). ``topology_hash``: :func:`antialias_construct_topology_hash` of ``tri`` (built
    per call when None). An edge is a silhouette if no other triangle shares its two
    vertex indices or the one that does faces the other way on screen."""
    if not isinstance(color, torch.Tensor) or color.dim() != 4 or 0 in color.shape:
        _fail(f"color must have shape [>0, >0, >0, >0], got {list(getattr(color, 'shape', []))}")
    frame = Frame(*color.shape[:3])
    if _rast_frame(rast) != frame:
        _fail(f"rast must have shape {list(frame.shape(4))} (as color), got {list(rast.shape)}")
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and pos.shape[0] != frame.views:
        _fail(f"instance mode - pos must have shape [{frame.views}, >0, 4] (minibatch of color), "
              f"got {list(pos.shape)}")  # fmt: skip
    g = _Geometry(pos, tri, None, views=frame.views)
    if topology_hash is None:  # built once per index tensor (and version)
        topology_hash = _TOPOLOGY.get(tri) or _TOPOLOGY.put(
            tri, antialias_construct_topology_hash(g.tri)
        )
    if not isinstance(topology_hash, TopologyHash):
        _fail("topology_hash must come from antialias_construct_topology_hash(tri)")
    if topology_hash.n_triangles != g.tri.shape[0]:
        _fail(f"topology_hash was built for {topology_hash.n_triangles} triangles, "
              f"tri has {g.tri.shape[0]}")  # fmt: skip
    if isinstance(pos_gradient_boost, bool) or not isinstance(pos_gradient_boost, int | float):
        _fail(f"pos_gradient_boost must be a number, got {pos_gradient_boost!r}")
    col = _float(color, "color", g.work).reshape(frame.pixels, -1)
    r = _float(rast, "rast", g.work).reshape(-1, 4).detach()  # no gradient to rast
    n = frame.pixels
    ids = _IDS.get(rast)
    depth = r[:, 2].contiguous()  # z/w decides which triangle is in front
    if ids is None or ids.device != g.work:
        ids = torch.empty(n, dtype=torch.int32, device=g.work)
        interpolation.rast_ids(r, ids, depth)
    edges = torch.empty((2 * n, 3), dtype=torch.int32, device=g.work)
    bits = torch.empty(frame.views * g.tri.shape[0], dtype=torch.int32, device=g.work)
    silhouette.detect(
        ids, depth, g.clip.detach(), g.tri, topology_hash.neighbours.to(g.work), g.ranges,
        frame, bits, edges, rules="nvdiffrast", shared=not g.instanced,
    )  # fmt: skip
    out = _Antialias.apply(col, g.clip, edges, frame, float(pos_gradient_boost))
    return out.reshape(color.shape).to(device=color.device, dtype=color.dtype)


# --------------------------------------------------------------------------- alias


def install_alias() -> None:
    """Make ``import nvdiffrast.torch`` give this module (for third-party code that imports
    nvdiffrast itself). Does nothing if a real nvdiffrast is already imported."""
    if "nvdiffrast" in sys.modules and not getattr(sys.modules["nvdiffrast"], "_taichi_dr", False):
        return
    package = types.ModuleType("nvdiffrast")
    package.__version__ = NVDIFFRAST_VERSION
    package._taichi_dr = True
    package.torch = sys.modules[__name__]
    sys.modules["nvdiffrast"] = package
    sys.modules["nvdiffrast.torch"] = sys.modules[__name__]
