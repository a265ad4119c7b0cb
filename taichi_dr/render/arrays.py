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

from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend

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


@ti.kernel
def _zero(array: ti.types.ndarray(ndim=1)):
    for i in range(array.shape[0]):
        array[i] = ti.zero(array[i])


def zero(*arrays) -> None:
    """Set 1-D Taichi ndarrays to 0, e.g. gradients before a backward pass: a memset for
    scalar elements, one kernel launch for vector elements (``Ndarray.fill`` takes a slow
    path there: 2.3 ms for 65,536 vec3 against 0.2 ms)."""
    for array in arrays:
        if isinstance(array, ti.ScalarNdarray):
            array.fill(0)
        else:
            _zero(array)


def _np_dtype(dtype):
    return {ti.f32: np.float32, ti.f64: np.float64, ti.i32: np.int32, ti.i64: np.int64}[dtype]


@ti.func
def pixel(i: ti.i32, height: ti.i32, width: ti.i32):
    """The (view, row, column) of flat pixel index ``i``."""
    row = i // width
    return row // height, row % height, i - row * width


@ti.func
def pixel_ndc(y: ti.i32, x: ti.i32, height: ti.i32, width: ti.i32):
    """NDC of the centre of pixel (row y, column x); rows grow downwards."""
    return ti.Vector([(x + 0.5) / width * 2.0 - 1.0, 1.0 - (y + 0.5) / height * 2.0])
