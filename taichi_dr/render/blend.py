"""Test & blend: front-to-back alpha compositing of depth-peeled layers over a background.

The depth test itself happens in the rasterizer (nearest fragment wins); each further
peeling layer is the next-nearest surface. Layer k with colour cₖ and alpha aₖ is added
as ``C += Tₖ aₖ cₖ``, ``Tₖ₊₁ = Tₖ (1 − aₖ)``; finally ``C += T_N · background``.
Owns ``image`` (H, W, 3) and ``alpha`` (H, W) = 1 − T_N, both with gradients, and the
per-layer transmittance (N + 1, H, W) so that no value is overwritten under autodiff.
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError


@ti.data_oriented
class Compositor:
    def __init__(self, width: int, height: int, layers: int = 1):
        real = backend.real()
        self.layers = int(layers)
        shape = (height, width)
        self.image = ti.Vector.field(3, real, shape=shape, **backend.diff())
        self.alpha = ti.field(real, shape=shape, **backend.diff())
        self.accum = ti.Vector.field(3, real, shape=(self.layers + 1, *shape), **backend.diff())
        self.transmittance = ti.field(real, shape=(self.layers + 1, *shape), **backend.diff())
        self.background = ti.Vector.field(3, real, shape=shape)

    def set_background(self, background) -> None:
        """A colour (3,) or an image (H, W, 3), linear."""
        bg = np.asarray(background, dtype=np.float64)
        shape = self.background.shape
        if bg.shape == (3,):
            bg = np.broadcast_to(bg, (*shape, 3))
        if bg.shape != (*shape, 3) or not np.all(np.isfinite(bg)):
            raise UserError(
                f"background must be an RGB colour or a {shape[1]}x{shape[0]} "
                f"RGB image, got shape {bg.shape}"
            )
        self.background.from_numpy(np.ascontiguousarray(bg, dtype=backend.np_real()))

    @ti.kernel
    def _begin(self):
        for y, x in self.alpha:
            self.accum[0, y, x] = ti.Vector([0.0, 0.0, 0.0])
            self.transmittance[0, y, x] = 1.0

    @ti.kernel
    def _add_layer(
        self, k: ti.i32, color: ti.template(), tri: ti.template(), opacity: ti.template()
    ):
        for y, x in self.alpha:
            a = ti.select(tri[y, x] >= 0, opacity[None], 0.0)
            t = self.transmittance[k, y, x]
            self.accum[k + 1, y, x] = self.accum[k, y, x] + t * a * color[y, x]
            self.transmittance[k + 1, y, x] = t * (1.0 - a)

    @ti.kernel
    def _finish(self, k: ti.i32):
        for y, x in self.alpha:
            t = self.transmittance[k, y, x]
            self.image[y, x] = self.accum[k, y, x] + t * self.background[y, x]
            self.alpha[y, x] = 1.0 - t

    @ti.kernel
    def _single(
        self, color: ti.template(), tri: ti.template(), opacity: ti.template(), stop: ti.template()
    ):
        for y, x in self.alpha:
            for field in ti.static(stop):
                ti.stop_grad(field)
            a = ti.select(tri[y, x] >= 0, opacity[None], 0.0)
            self.image[y, x] = a * color[y, x] + (1.0 - a) * self.background[y, x]
            self.alpha[y, x] = a

    def single(self, color, triangle_id, opacity, stop=()) -> None:
        """One layer over the background in one pass (same result as begin, add_layer(0),
        finish(1)); ``stop``: input fields that get no gradient."""
        self._single(color, triangle_id, opacity, stop)

    def begin(self) -> None:
        self._begin()

    def add_layer(self, k: int, color, triangle_id, opacity) -> None:
        self._add_layer(k, color, triangle_id, opacity)

    def finish(self, layers: int) -> None:
        self._finish(layers)

    def zero_grad(self) -> None:
        backend.zero_grads(self.image, self.alpha, self.accum, self.transmittance)
