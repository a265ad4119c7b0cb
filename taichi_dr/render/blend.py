"""Test & blend: front-to-back alpha compositing of depth-peeled layers over a background.

The depth test itself happens in the rasterizer (nearest fragment wins); each further
peeling layer is the next-nearest surface. Layer k with colour cₖ and alpha aₖ is added
as ``C += Tₖ aₖ cₖ``, ``Tₖ₊₁ = Tₖ (1 − aₖ)``; finally ``C += T_N · background``.
Owns ``image`` (H, W, 3) and ``alpha`` (H, W) = 1 − T_N, both with gradients, and the
per-layer transmittance (N + 1, H, W) so that no value is overwritten under autodiff.

Array version (issue 13, compile once): ``composite`` (one layer) and ``composite_layer``
/ ``composite_finish`` (peeled layers) over flat per-pixel arrays the caller owns.
"""

import taichi as ti

from ..errors import UserError
from .arrays import Int, Real, Vec3
from .shading import MATERIAL_SIZE, OPACITY

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
