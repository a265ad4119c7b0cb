"""Textures: a level-0 image with gradients and its box-filtered mip pyramid.

Texel rows are stored top row first (like the image file); uv (0, 0) is the bottom-left
corner (OpenGL), so texel coordinates are ``(u·w − ½, (1 − v)·h − ½)``. Filters:
"nearest", "bilinear", "trilinear" (bilinear in the two mip levels around the level of
detail); wrap modes "repeat" and "clamp". Gradients reach ``texels`` through every mip
level because the pyramid is rebuilt by differentiable kernels in ``forward``.
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError

FILTERS = ("nearest", "bilinear", "trilinear")
WRAPS = ("repeat", "clamp")


@ti.func
def _floor(x):
    """⌊x⌋ as i32, without ``ti.floor`` (Taichi 1.7.4's forward mode cannot compile it)."""
    i = ti.cast(x, ti.i32)  # truncates towards zero
    return i - ti.select(x < i, 1, 0)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@ti.data_oriented
class Texture:
    """An RGB texture of ``height`` × ``width`` texels (powers of two when mipmapped)."""

    def __init__(self, height: int, width: int, filter: str = "bilinear", wrap: str = "repeat"):
        if filter not in FILTERS:
            raise UserError(f"unknown texture filter {filter!r}; choose one of {FILTERS}")
        if wrap not in WRAPS:
            raise UserError(f"unknown wrap mode {wrap!r}; choose one of {WRAPS}")
        if filter == "trilinear" and not (_is_pow2(height) and _is_pow2(width)):
            raise UserError(
                f"mipmapped textures need power-of-two sizes, got {width}x{height}; "
                "resize the texture or use filter='bilinear'"
            )
        real = backend.real()
        self.height, self.width, self.filter, self.wrap = int(height), int(width), filter, wrap
        self.levels = 1 + int(math.log2(max(height, width))) if filter == "trilinear" else 1
        sizes = [(max(height >> k, 1), max(width >> k, 1)) for k in range(self.levels)]
        offsets = np.cumsum([0] + [h for h, _ in sizes])
        self.level_info = ti.Vector.field(3, ti.i32, shape=self.levels)  # row offset, h, w
        self.level_info.from_numpy(
            np.array([[offsets[k], *sizes[k]] for k in range(self.levels)], dtype=np.int32)
        )
        self._sizes, self._offsets = sizes, offsets
        self.texels = ti.Vector.field(3, real, shape=(height, width), **backend.diff())
        self.pyramid = ti.Vector.field(3, real, shape=(int(offsets[-1]), width), **backend.diff())

    def upload(self, image: np.ndarray) -> None:
        """Set level 0 from a linear float image (H, W, 3), row 0 at the top."""
        image = np.asarray(image, dtype=np.float64)
        if image.shape != (self.height, self.width, 3):
            raise UserError(f"texture must be {self.height}x{self.width}x3, got {image.shape}")
        self.texels.from_numpy(image.astype(backend.np_real()))

    @ti.kernel
    def _copy_base(self):
        for y, x in self.texels:
            self.pyramid[y, x] = self.texels[y, x]

    @ti.kernel
    def _downsample(self, level: ti.i32):
        for y, x in ti.ndrange(self._sizes[0][0], self.width):
            src, dst = self.level_info[level - 1], self.level_info[level]
            if y < dst[1] and x < dst[2]:
                y0, x0 = ti.min(2 * y, src[1] - 1), ti.min(2 * x, src[2] - 1)
                y1, x1 = ti.min(2 * y + 1, src[1] - 1), ti.min(2 * x + 1, src[2] - 1)
                self.pyramid[dst[0] + y, x] = 0.25 * (
                    self.pyramid[src[0] + y0, x0]
                    + self.pyramid[src[0] + y0, x1]
                    + self.pyramid[src[0] + y1, x0]
                    + self.pyramid[src[0] + y1, x1]
                )

    def forward(self) -> None:
        """Rebuild the pyramid from ``texels`` (call after changing them)."""
        self._copy_base()
        for level in range(1, self.levels):
            self._downsample(level)

    def zero_grad(self) -> None:
        backend.zero_grads(self.texels, self.pyramid)

    @ti.func
    def _texel(self, level: ti.i32, y: ti.i32, x: ti.i32):
        info = self.level_info[level]
        if ti.static(self.wrap == "repeat"):
            y, x = y % info[1], x % info[2]  # Taichi's % is non-negative for positive divisor
        else:
            y, x = ti.min(ti.max(y, 0), info[1] - 1), ti.min(ti.max(x, 0), info[2] - 1)
        return self.pyramid[info[0] + y, x]

    @ti.func
    def _bilinear(self, level: ti.i32, uv: ti.template()):
        info = self.level_info[level]
        tx = uv[0] * info[2] - 0.5
        ty = (1.0 - uv[1]) * info[1] - 0.5
        ix, iy = _floor(tx), _floor(ty)
        fx, fy = tx - ix, ty - iy
        return (1 - fy) * (
            (1 - fx) * self._texel(level, iy, ix) + fx * self._texel(level, iy, ix + 1)
        ) + fy * (
            (1 - fx) * self._texel(level, iy + 1, ix) + fx * self._texel(level, iy + 1, ix + 1)
        )

    @ti.func
    def sample(self, uv: ti.template(), footprint: ti.template()):
        """Colour at ``uv``; ``footprint`` = texture-space size of one pixel in uv units
        (max of |∂uv/∂x|, |∂uv/∂y|), used by the trilinear filter to pick the level."""
        out = ti.Vector([0.0, 0.0, 0.0])
        if ti.static(self.filter == "nearest"):
            iy = _floor((1.0 - uv[1]) * self.height)
            ix = _floor(uv[0] * self.width)
            out = self._texel(0, iy, ix)
        elif ti.static(self.filter == "bilinear"):
            out = self._bilinear(0, uv)
        else:
            texels = footprint * ti.max(self.height, self.width)
            lod = ti.log(ti.max(texels, 1.0)) / ti.log(2.0)
            lod = ti.min(lod, self.levels - 1.0)
            l0 = _floor(lod)
            l1 = ti.min(l0 + 1, self.levels - 1)
            t = lod - l0
            out = (1.0 - t) * self._bilinear(l0, uv) + t * self._bilinear(l1, uv)
        return out
