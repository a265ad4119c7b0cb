"""Textures: a level-0 image with gradients and its box-filtered mip pyramid.

Texel rows are stored top row first (like the image file); uv (0, 0) is the bottom-left
corner (OpenGL), so texel coordinates are ``(u·w − ½, (1 − v)·h − ½)``. Filters:
"nearest", "bilinear", "trilinear" (bilinear in the two mip levels around the level of
detail); wrap modes "repeat" and "clamp". Gradients reach ``texels`` through every mip
level because the pyramid is rebuilt by differentiable kernels in ``forward``.

Array version (issue 13, compile once): ``Texture`` keeps the texels and the pyramid
in flat ndarrays, ``build_pyramid`` fills the pyramid, the ``ti.func`` ``sample`` reads
it inside any kernel and ``lookup`` samples n points.
"""

import math
from typing import NamedTuple

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from . import arrays
from .arrays import IVec3, Real, Vec2, Vec3

FILTERS = ("nearest", "bilinear", "trilinear")
WRAPS = ("repeat", "clamp")


@ti.func
def _floor(x):
    """⌊x⌋ as i32, without ``ti.floor`` (Taichi 1.7.4's forward mode cannot compile it)."""
    i = ti.cast(x, ti.i32)  # truncates towards zero
    return i - ti.select(x < i, 1, 0)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_texture(height: int, width: int, filter: str, wrap: str) -> None:
    """Raise a one-line ``UserError`` for an unknown filter or wrap mode, or a mipmapped
    texture whose sides are not powers of two."""
    if filter not in FILTERS:
        raise UserError(f"unknown texture filter {filter!r}; choose one of {FILTERS}")
    if wrap not in WRAPS:
        raise UserError(f"unknown wrap mode {wrap!r}; choose one of {WRAPS}")
    if filter == "trilinear" and not (_is_pow2(height) and _is_pow2(width)):
        raise UserError(
            f"mipmapped textures need power-of-two sizes, got {width}x{height}; "
            "resize the texture or use filter='bilinear'"
        )


# A texture is a flat array of RGB texels: level k of the pyramid occupies
# ``texels[offset_k : offset_k + h_k · w_k]``, row-major, row 0 at the top; ``levels``
# (L,) ivec3 holds (offset_k, h_k, w_k). Level 0 alone (L = 1) for nearest and bilinear.


def mip_levels(height: int, width: int, filter: str) -> np.ndarray:
    """(L, 3) int32 rows (offset, height, width) of the levels ``filter`` samples: the
    full pyramid down to 1×1 for "trilinear", else level 0 only."""
    count = 1 + int(math.log2(max(height, width))) if filter == "trilinear" else 1
    sizes = [(max(height >> k, 1), max(width >> k, 1)) for k in range(count)]
    offsets = np.cumsum([0] + [h * w for h, w in sizes])
    return np.array([(offsets[k], *sizes[k]) for k in range(count)], dtype=np.int32)


class Sampler(NamedTuple):
    """What a shading kernel samples: ``texels`` (n,) vec3 (the level-0 texels, or the
    whole pyramid), ``levels`` (L,) ivec3, and the ``filter`` and ``wrap`` names."""

    texels: object
    levels: object
    filter: str
    wrap: str


@ti.kernel
def _copy(src: Vec3, dst: Vec3):
    for i in range(src.shape[0]):
        dst[i] = src[i]


@ti.kernel
def _downsample(
    pyramid: Vec3, src: ti.i32, src_h: ti.i32, src_w: ti.i32, dst: ti.i32, h: ti.i32, w: ti.i32
):
    """Level (dst, h, w) = 2×2 box average of level (src, src_h, src_w) (edges repeated
    where a side is already 1)."""
    for i in range(h * w):
        y = i // w
        x = i - y * w
        y0, x0 = ti.min(2 * y, src_h - 1), ti.min(2 * x, src_w - 1)
        y1, x1 = ti.min(2 * y + 1, src_h - 1), ti.min(2 * x + 1, src_w - 1)
        pyramid[dst + i] = 0.25 * (
            pyramid[src + y0 * src_w + x0]
            + pyramid[src + y0 * src_w + x1]
            + pyramid[src + y1 * src_w + x0]
            + pyramid[src + y1 * src_w + x1]
        )


def build_pyramid(texels, pyramid, levels: np.ndarray, backward: bool = False) -> None:
    """Fill ``pyramid`` (all levels, (levels[-1].offset + h·w,) vec3) from level-0
    ``texels`` (h·w,) vec3, for the (L, 3) ``levels`` table of ``mip_levels``.
    Differentiable: ``backward=True`` adds ``pyramid.grad`` (every level) into
    ``texels.grad``, as a ``ti.ad.Tape`` would."""
    steps = [(_copy, (texels, pyramid))] + [
        (_downsample, (pyramid, *(int(v) for v in levels[k - 1]), *(int(v) for v in levels[k])))
        for k in range(1, len(levels))
    ]
    for kernel, args in reversed(steps) if backward else steps:
        (kernel.grad if backward else kernel)(*args)


@ti.func
def texel(texels: ti.template(), levels: ti.template(), wrap: ti.template(), level, y, x):
    """Texel (row y, column x) of ``level``, wrapped or clamped."""
    info = levels[level]
    if ti.static(wrap == WRAPS.index("repeat")):
        y, x = y % info[1], x % info[2]  # Taichi's % is non-negative for positive divisor
    else:
        y, x = ti.min(ti.max(y, 0), info[1] - 1), ti.min(ti.max(x, 0), info[2] - 1)
    return texels[info[0] + y * info[2] + x]


@ti.func
def bilinear(texels: ti.template(), levels: ti.template(), wrap: ti.template(), level, uv):
    info = levels[level]
    tx = uv[0] * info[2] - 0.5
    ty = (1.0 - uv[1]) * info[1] - 0.5
    ix, iy = _floor(tx), _floor(ty)
    fx, fy = tx - ix, ty - iy
    return (1 - fy) * (
        (1 - fx) * texel(texels, levels, wrap, level, iy, ix)
        + fx * texel(texels, levels, wrap, level, iy, ix + 1)
    ) + fy * (
        (1 - fx) * texel(texels, levels, wrap, level, iy + 1, ix)
        + fx * texel(texels, levels, wrap, level, iy + 1, ix + 1)
    )


@ti.func
def sample(
    texels: ti.template(),
    levels: ti.template(),
    filter: ti.template(),
    wrap: ti.template(),
    uv,
    footprint,
):
    """Colour at ``uv`` (``filter``, ``wrap``: indices into FILTERS, WRAPS);
    ``footprint`` = size of one pixel in uv units, picks the trilinear level."""
    out = ti.Vector([0.0, 0.0, 0.0])
    base = levels[0]
    if ti.static(filter == FILTERS.index("nearest")):
        iy = _floor((1.0 - uv[1]) * base[1])
        ix = _floor(uv[0] * base[2])
        out = texel(texels, levels, wrap, 0, iy, ix)
    elif ti.static(filter == FILTERS.index("bilinear")):
        out = bilinear(texels, levels, wrap, 0, uv)
    else:
        top = levels.shape[0] - 1
        size = footprint * ti.max(base[1], base[2])
        lod = ti.log(ti.max(size, 1.0)) / ti.log(2.0)
        lod = ti.min(lod, top * 1.0)
        l0 = _floor(lod)
        l1 = ti.min(l0 + 1, top)
        t = lod - l0
        out = (1.0 - t) * bilinear(texels, levels, wrap, l0, uv) + t * bilinear(
            texels, levels, wrap, l1, uv
        )
    return out


@ti.kernel
def _lookup(
    filter: ti.template(),
    wrap: ti.template(),
    texels: Vec3,
    levels: IVec3,
    uv: Vec2,
    footprint: Real,
    out: Vec3,
):
    for i in range(out.shape[0]):
        out[i] = sample(texels, levels, filter, wrap, uv[i], footprint[i])


def lookup(sampler: Sampler, uv, footprint, out, backward: bool = False) -> None:
    """``out[i]`` = the texture's colour at ``uv[i]`` (n,) vec2 with ``footprint[i]`` (n,).
    Differentiable in the texels, ``uv`` and ``footprint``: ``backward=True`` adds
    ``out.grad`` through the sampling into the inputs' gradients."""
    n = out.shape[0]
    for name, a in (("uv", uv), ("footprint", footprint)):
        if a.shape[0] != n:
            raise UserError(f"texture lookup: {name} has {a.shape[0]} entries, out has {n}")
    args = (*_statics(sampler), sampler.texels, sampler.levels, uv, footprint, out)
    (_lookup.grad if backward else _lookup)(*args)


def _statics(sampler: Sampler) -> tuple:
    check_texture(2, 2, sampler.filter, sampler.wrap)
    return FILTERS.index(sampler.filter), WRAPS.index(sampler.wrap)


class Texture:
    """An RGB texture of ``height`` × ``width`` texels (powers of two when mipmapped) as
    flat arrays: ``texels`` (h·w,) vec3 with gradients (level 0, row 0 at the top), and
    for "trilinear" the ``pyramid`` of every level, rebuilt by ``forward``."""

    def __init__(self, height: int, width: int, filter: str = "bilinear", wrap: str = "repeat"):
        check_texture(height, width, filter, wrap)
        self.height, self.width, self.filter, self.wrap = int(height), int(width), filter, wrap
        self.level_table = mip_levels(self.height, self.width, filter)
        self.levels = arrays.from_numpy(self.level_table, dtype=ti.i32)
        self.texels = arrays.empty(self.height * self.width, 3, grad=True)
        size = int(self.level_table[-1, 0] + self.level_table[-1, 1] * self.level_table[-1, 2])
        self.pyramid = arrays.empty(size, 3, grad=True) if len(self.level_table) > 1 else None
        self._plain = None  # the sampled array without gradients, made on demand

    def upload(self, image) -> None:
        """Set level 0 from a linear float image (H, W, 3), row 0 at the top."""
        image = np.asarray(image, dtype=np.float64)
        if image.shape != (self.height, self.width, 3):
            raise UserError(f"texture must be {self.height}x{self.width}x3, got {image.shape}")
        if not np.all(np.isfinite(image)):
            raise UserError("texture has NaN or inf texels; pass finite values")
        self.texels.from_numpy(image.reshape(-1, 3).astype(backend.np_real()))

    def image(self) -> np.ndarray:
        """Level 0 as an (H, W, 3) array."""
        return self.texels.to_numpy().reshape(self.height, self.width, 3)

    def grad(self) -> np.ndarray:
        """The gradient of level 0, (H, W, 3)."""
        return self.texels.grad.to_numpy().reshape(self.height, self.width, 3)

    def forward(self, grad: bool = True) -> Sampler:
        """Rebuild the pyramid from ``texels`` (inside the tape when the texels are
        differentiated) and return the ``Sampler`` to shade with; ``grad=False``: sample
        a copy without gradients (the shading kernel then skips the texture's adjoint)."""
        sampled = self.texels if self.pyramid is None else self.pyramid
        if not grad:
            if self._plain is None:
                self._plain = arrays.empty(sampled.shape[0], 3)
            if self.pyramid is None:
                arrays.detach(self.texels, self._plain)
            else:
                arrays.untaped(build_pyramid, self.texels, self._plain, self.level_table)
            sampled = self._plain
        elif self.pyramid is not None:
            build_pyramid(self.texels, self.pyramid, self.level_table)
        return Sampler(sampled, self.levels, self.filter, self.wrap)

    def zero_grad(self) -> None:
        for a in (self.texels, self.pyramid):
            if a is not None:
                a.grad.fill(0)
