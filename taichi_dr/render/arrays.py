"""Array conventions of the rendering kernels: compile once, any size, any batch.

Every rendering kernel is a module-level ``@ti.kernel`` whose arrays are
``ti.types.ndarray`` arguments (the aliases below). Taichi compiles it once per arch and
float type, and it then serves every resolution, mesh size and batch size; a kernel that
reads ``ti.field`` s compiles again for every new set of fields (seconds per renderer).
Taichi ndarrays, NumPy arrays and torch tensors all pass without copies (CPU tensors;
CUDA tensors when Taichi runs on cuda).

The layout every stage follows:

* A batch of B views of H × W pixels. Pixel (view b, row y, column x) has the flat index
  ``i = (b·H + y)·W + x``: a C-contiguous (B, H, W, C) array viewed as (B·H·W, C). Row 0
  is the top of the image.
* Per-pixel arrays are 1-D, of length B·H·W, with a scalar or vector element. Flat
  indexing costs what a field access costs; 2-D and 3-D ndarray indexing made a
  shading-like kernel 1.3–1.8× slower (TAICHI_NOTES §10), hence flat.
* Per-vertex arrays are (V,) when every view shares them, or (B·V,) with one copy per view.
* ``faces`` (F,) ``IVec3`` int32, counter-clockwise seen from outside; a view renders
  the faces of its range ``[start, start + count)``. ``triangle_id`` (B·H·W,) int32 is
  the face index, −1 where the pixel is empty.
* Differentiable kernels loop over their items in one flat top-level loop (Taichi 1.7.4's
  reverse mode is wrong for exp/min/max in nested runtime loops, TAICHI_NOTES §6). An
  input passed without a gradient (an ndarray without ``needs_grad``, a tensor without
  ``requires_grad``) gets none: its reverse-mode work is compiled out.
"""

import ctypes
import functools
from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError


def vector(n: int):
    """The n-vector type of the float type in use: like ``ti.math.vec3``, it follows
    ``ti.init(default_fp=...)`` even when built before (``float`` would be fixed at f32)."""
    return ti.types.vector(n, ti.lang.impl.default_cfg().default_fp)


Real = ti.types.ndarray(ndim=1)  # scalars of the float type in use
Int = ti.types.ndarray(dtype=ti.i32, ndim=1)
Vec2 = ti.types.ndarray(dtype=ti.math.vec2, ndim=1)
Vec3 = ti.types.ndarray(dtype=ti.math.vec3, ndim=1)
Vec4 = ti.types.ndarray(dtype=ti.math.vec4, ndim=1)
IVec2 = ti.types.ndarray(dtype=ti.math.ivec2, ndim=1)
IVec3 = ti.types.ndarray(dtype=ti.math.ivec3, ndim=1)


def no_grad(annotation):
    """``annotation`` (an alias above) for a kernel that Taichi never differentiates
    (visibility, or the forward and backward kernels of a hand-written adjoint): arrays
    with and without gradient storage then share one compiled kernel (Taichi otherwise
    compiles one per combination: the gradient storage is part of a kernel's signature)."""
    return ti.types.ndarray(dtype=annotation.dtype, ndim=annotation.ndim, needs_grad=False)


@dataclass(frozen=True)
class Frame:
    """The pixel grid of a batch: ``views`` × ``height`` × ``width``."""

    views: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.views * self.height * self.width

    def shape(self, *channels) -> tuple:
        """The user-facing shape (B, H, W, *channels)."""
        return (self.views, self.height, self.width, *channels)


def empty(n: int, channels: int = 0, dtype=None, grad: bool = False):
    """A Taichi ndarray of ``n`` elements: scalars (``channels`` = 0) or vectors of
    ``channels`` components, of ``dtype`` (default: the float type in use)."""
    backend.ensure_init()
    dtype = backend.real() if dtype is None else dtype
    element = ti.types.vector(channels, dtype) if channels else dtype
    return ti.ndarray(element, shape=max(int(n), 1), needs_grad=grad)


def from_numpy(values, dtype=None, grad: bool = False):
    """A Taichi ndarray holding ``values`` (n,) or (n, C) (C ≤ 4 becomes a vector)."""
    values = np.asarray(values)
    channels = values.shape[1] if values.ndim == 2 else 0
    dtype = backend.real() if dtype is None else dtype
    out = empty(len(values), channels, dtype, grad)
    if len(values):
        out.from_numpy(np.ascontiguousarray(values, dtype=_np_dtype(dtype)))
    return out


def vectors(channels: int, dtype=None):
    """The argument type of a 1-D array of ``channels``-component vectors of ``dtype``
    (default: the float type in use), for kernels built per channel count."""
    dtype = backend.real() if dtype is None else dtype
    return ti.types.ndarray(dtype=ti.types.vector(channels, dtype), ndim=1)


def channels(array) -> int:
    """The vector length C of an (n,) vector ndarray or an (n, C) tensor / NumPy array."""
    n = getattr(array, "n", None)  # Taichi vector ndarray
    if n is None and len(array.shape) == 2:
        n = array.shape[1]
    if n is None:
        raise UserError(f"expected (n, C) vectors, got an array of shape {tuple(array.shape)}")
    return int(n)


def check_length(array, n: int, name: str, what: str) -> None:
    """UserError unless ``array`` has ``n`` elements along its first axis."""
    if array.shape[0] != n:
        raise UserError(f"{name} has {array.shape[0]} entries but needs {n} ({what})")


def copy(src, out, add: bool = False) -> None:
    """``out`` = ``src`` (``add``: ``out`` += ``src``) for (n,) vectors of any channel
    count; differentiable (Taichi reverse mode)."""
    check_length(out, src.shape[0], "out", "one per source element")
    _copy_kernel(channels(src), backend.real())(src, out, add)


@functools.cache
def _copy_kernel(n_channels: int, dtype):
    Vectors = vectors(n_channels, dtype)

    @ti.kernel
    def copy(src: Vectors, out: Vectors, add: ti.template()):
        for i in range(src.shape[0]):
            if ti.static(add):
                out[i] += src[i]
            else:
                out[i] = src[i]

    return copy


@ti.kernel
def _zero(array: ti.types.ndarray(ndim=1)):
    for i in range(array.shape[0]):
        array[i] = 0  # broadcast; ti.zero(x) is x · 0, which keeps NaN


def _host_memory() -> bool:
    """Whether ndarrays live in this process's memory and Taichi can memset them (the
    CPU backends; CUDA memsets device memory but is not host-addressable)."""
    return ti.lang.impl.current_cfg().arch in (ti.x64, ti.arm64)


def zero(*arrays) -> None:
    """Set 1-D Taichi ndarrays to 0, e.g. gradients before a backward pass: a memset of
    every byte (0 bits are 0.0 in IEEE floats) on the CPU and CUDA, where a kernel launch
    costs 50–100 µs of Taichi's Python; elsewhere a fill (scalars) or a kernel (vectors:
    ``Ndarray.fill`` takes a slow path there)."""
    memset = _host_memory() or ti.lang.impl.current_cfg().arch == ti.cuda
    prog = ti.lang.impl.get_runtime().prog
    for array in arrays:
        if memset:
            prog.fill_int(array.arr, 0)
        elif isinstance(array, ti.ScalarNdarray):
            array.fill(0)
        else:
            _zero(array)


def _host_view(array) -> np.ndarray:
    """A NumPy view of a CPU ndarray's memory (valid while ``array`` lives)."""
    dtype = np.dtype(_np_dtype(array.dtype))
    shape = tuple(array.shape) + tuple(getattr(array, "element_shape", ()) or ())
    count = int(np.prod(shape))
    address = ti.lang.impl.get_runtime().prog.get_ndarray_data_ptr_as_int(array.arr)
    buffer = (ctypes.c_byte * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def read(array) -> np.ndarray:
    """A NumPy copy of a Taichi ndarray, as ``to_numpy()``: on the CPU straight from its
    memory (~10 µs against 50–150 µs for ``to_numpy``'s kernel launch; small arrays such
    as the per-view parameters and the lights are read on every frame)."""
    if not _host_memory():
        return array.to_numpy()
    ti.sync()
    return _host_view(array).copy()


def write(array, values) -> None:
    """``array.from_numpy(values)``, on the CPU straight into its memory (see ``read``)."""
    if not _host_memory():
        array.from_numpy(values)
        return
    ti.sync()
    view = _host_view(array)
    view[...] = np.asarray(values).reshape(view.shape)


def _np_dtype(dtype):
    return {ti.f32: np.float32, ti.f64: np.float64, ti.i32: np.int32, ti.i64: np.int64}[dtype]


@ti.func
def pixel(i: ti.i32, height: ti.i32, width: ti.i32):
    """The (view, row, column) of flat pixel index ``i`` ≥ 0. C division (``ti.raw_div``):
    Python's floor division adds sign fix-ups: 5–11 % of the unlit and Lambert pixel pass."""
    row = ti.raw_div(i, width)
    view = ti.raw_div(row, height)
    return view, row - view * height, i - row * width


@ti.func
def pixel_ndc(y: ti.i32, x: ti.i32, height: ti.i32, width: ti.i32):
    """NDC of the centre of pixel (row y, column x); rows grow downwards."""
    return ti.Vector([(x + 0.5) / width * 2.0 - 1.0, 1.0 - (y + 0.5) / height * 2.0])


@ti.func
def vec3_at(values: ti.template(), offset):
    """The 3-vector ``values[offset : offset + 3]`` of a packed scalar array."""
    return ti.Vector([values[offset], values[offset + 1], values[offset + 2]])


@ti.ad.grad_replaced
def _untaped(fn, args) -> None:
    fn(*args)


@ti.ad.grad_for(_untaped)
def _untaped_grad(fn, args) -> None:
    """Nothing flows back through work done without gradients."""


def untaped(fn, *args) -> None:
    """Run ``fn(*args)`` with no gradient path through its kernels, inside a
    ``ti.ad.Tape`` too: the tape would otherwise record them and run their reverse passes
    (the reverse of a copy into, or a clear of, a gradient-less array is not a no-op)."""
    _untaped(fn, args)


def new_tape(owner) -> bool:
    """Whether a ``ti.ad.Tape`` is recording that ``owner`` has not seen yet (it then
    remembers it). Owners of ndarray parameters clear their gradients at the first use in
    each tape, as the tape itself does for fields."""
    tape = ti.lang.impl.get_runtime().target_tape
    if tape is None or getattr(owner, "_tape", None) is tape:
        return False
    owner._tape = tape
    return True


def detach(src, dst) -> None:
    """``dst`` ← ``src`` (same shape and type; ``dst`` without gradients): a copy that
    no gradient flows back through (on the CPU a memory copy, no kernel launch)."""
    if _host_memory() and all(isinstance(a, ti.lang._ndarray.Ndarray) for a in (src, dst)):
        ti.sync()
        _host_view(dst)[...] = _host_view(src)
    else:
        untaped(dst.copy_from, src)


def clear_grads(*arrays) -> None:
    """Set the gradients of ``arrays`` to zero (outside the tape's record)."""
    untaped(zero, *[a.grad for a in arrays])


@ti.func
def unravel(i, a: ti.template()):
    """The index (a vector of ``a``'s axes) of element number ``i`` (row-major) of ndarray
    ``a``. Loop over any ndarray as ``for i in range(n)`` with this: on the CPU a flat range
    runs 4–5× faster than ``ti.grouped`` over an ndarray (measured: zeroing 262,144 vec3)."""
    n = ti.static(len(a.shape))
    index = ti.Vector([0] * n)
    for d in ti.static(range(n - 1, 0, -1)):
        index[d] = i % a.shape[d]
        i = i // a.shape[d]
    index[0] = i
    return index


@ti.kernel
def _copy_field(field: ti.template(), out: ti.types.ndarray()):
    for I in ti.grouped(field):
        k = I[0]
        for d in ti.static(range(1, len(field.shape))):
            k = k * field.shape[d] + I[d]
        out[k] = field[I]


def copy_field(field, out) -> None:
    """Copy a Taichi field into the flat ndarray ``out`` (row-major order, elements kept:
    an (H, W) vec3 field fills an (H·W,) vec3 array). A kernel, so under ``ti.ad.Tape``
    gradients flow from ``out.grad`` back into ``field.grad``: the bridge from field-based
    code (the simulator, the field-based stages) to the array losses."""
    element = ()
    if isinstance(field, ti.MatrixField):
        element = (field.n,) if field.m == 1 else (field.n, field.m)
    n = int(np.prod(field.shape))
    if tuple(out.shape) != (n,) or tuple(getattr(out, "element_shape", ())) != element:
        raise UserError(
            f"copy_field: a field of shape {tuple(field.shape)} with elements {element} needs a "
            f"flat ndarray ({n},) with those elements, got shape {tuple(out.shape)}"
        )
    _copy_field(field, out)
