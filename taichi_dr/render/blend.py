"""Test & blend: front-to-back alpha compositing of depth-peeled layers over a background.

The depth test itself happens in the rasterizer (nearest fragment wins); each further
peeling layer is the next-nearest surface. Layer k with colour cₖ and alpha aₖ is added
as ``C += Tₖ aₖ cₖ``, ``Tₖ₊₁ = Tₖ (1 − aₖ)``; finally ``C += T_N · background``.
Owns ``image`` (H, W, 3) and ``alpha`` (H, W) = 1 − T_N, both with gradients, and the
per-layer transmittance (N + 1, H, W) so that no value is overwritten under autodiff.

Array version (issue 13, compile once): ``composite`` (one layer) and ``composite_layer``
/ ``composite_finish`` (peeled layers) over flat per-pixel arrays the caller owns.
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .arrays import Int, Real, Vec3
from .shading import MATERIAL_SIZE, OPACITY


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


# ---------------------------------------------------------------- array version (issue 13)
# Flat per-pixel arrays (N = B·H·W). A pixel is covered where ``triangle_id`` ≥ 0; its
# alpha is then the material's opacity. The background is one colour ((1,) vec3) or one
# per pixel ((N,) vec3), and gets gradients when it carries them.


@ti.func
def _alpha(tri: ti.template(), material: ti.template(), i):
    return ti.select(tri[i] >= 0, material[OPACITY], 0.0)


@ti.func
def _background(background: ti.template(), i):
    return background[ti.select(background.shape[0] == 1, 0, i)]


@ti.kernel
def _composite(tri: Int, color: Vec3, material: Real, background: Vec3, image: Vec3, alpha: Real):
    for i in range(image.shape[0]):
        a = _alpha(tri, material, i)
        image[i] = a * color[i] + (1.0 - a) * _background(background, i)
        alpha[i] = a


@ti.kernel
def _composite_layer(
    k: ti.i32, tri: Int, color: Vec3, material: Real, accum: Vec3, transmittance: Real
):
    for i in range(tri.shape[0]):
        n = tri.shape[0]  # inside the loop: a kernel body is one loop for autodiff
        a = _alpha(tri, material, i)
        t = 1.0
        c = ti.Vector([0.0, 0.0, 0.0])
        if k > 0:
            t = transmittance[(k - 1) * n + i]
            c = accum[(k - 1) * n + i]
        accum[k * n + i] = c + t * a * color[i]
        transmittance[k * n + i] = t * (1.0 - a)


@ti.kernel
def _composite_finish(
    k: ti.i32, accum: Vec3, transmittance: Real, background: Vec3, image: Vec3, alpha: Real
):
    for i in range(image.shape[0]):
        n = image.shape[0]
        t = transmittance[k * n + i]
        image[i] = accum[k * n + i] + t * _background(background, i)
        alpha[i] = 1.0 - t


def _check(n: int, material, background, **per_pixel) -> None:
    for name, a in per_pixel.items():
        if a.shape[0] != n:
            raise UserError(f"composite: {name} has {a.shape[0]} entries, expected {n}")
    if material.shape[0] != MATERIAL_SIZE:
        raise UserError(f"composite: material must be the packed ({MATERIAL_SIZE},) array")
    if background is not None and background.shape[0] not in (1, n):
        raise UserError(
            f"composite: background must be one colour (1,) or one per pixel ({n},), "
            f"got {background.shape[0]}"
        )


def composite(triangle_id, color, material, background, image, alpha, backward=False) -> None:
    """One layer over the background: ``image`` = a·color + (1 − a)·background and
    ``alpha`` = a, with a = opacity where ``triangle_id`` ≥ 0, else 0 (all (N,)).
    Differentiable in color, material and background (``backward=True``: add
    ``image.grad`` and ``alpha.grad`` into theirs)."""
    n = image.shape[0]
    _check(n, material, background, triangle_id=triangle_id, color=color, alpha=alpha)
    kernel = _composite.grad if backward else _composite
    kernel(triangle_id, color, material, background, image, alpha)


def composite_layer(k, triangle_id, color, material, accum, transmittance, backward=False) -> None:
    """Add depth-peeled layer ``k`` (0 = nearest) front to back: with layer k's coverage
    and colour (N,), ``accum[k]`` = accum[k−1] + T·a·color and ``transmittance[k]`` =
    T·(1 − a), T = transmittance[k−1] (1 for k = 0). ``accum`` (L·N,) vec3 and
    ``transmittance`` (L·N,) hold one slice per layer, so nothing is overwritten and
    the layers differentiate under ``ti.ad.Tape`` (or ``backward=True``, in reverse)."""
    n = triangle_id.shape[0]
    _check(n, material, None, color=color)
    if not 0 <= k or (k + 1) * n > min(accum.shape[0], transmittance.shape[0]):
        raise UserError(f"composite_layer: layer {k} does not fit accum/transmittance")
    kernel = _composite_layer.grad if backward else _composite_layer
    kernel(int(k), triangle_id, color, material, accum, transmittance)


def composite_finish(layers, accum, transmittance, background, image, alpha, backward=False):
    """After ``layers`` calls of ``composite_layer``: ``image`` = accum + T·background,
    ``alpha`` = 1 − T (T, accum of the last layer)."""
    n = image.shape[0]
    if layers < 1 or layers * n > min(accum.shape[0], transmittance.shape[0]):
        raise UserError(f"composite_finish: {layers} layers do not fit accum/transmittance")
    if background.shape[0] not in (1, n):
        raise UserError(
            f"composite: background must be one colour (1,) or one per pixel ({n},), "
            f"got {background.shape[0]}"
        )
    kernel = _composite_finish.grad if backward else _composite_finish
    kernel(int(layers) - 1, accum, transmittance, background, image, alpha)
