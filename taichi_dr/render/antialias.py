"""Analytic antialiasing (Laine et al. 2020, nvdiffrast): visibility gradients behind an
almost unchanged image.

For each pixel pair (P, Q) straddling a silhouette edge of the front triangle T (see
``silhouette``), with the edge crossing at ``alpha`` from P's centre towards Q's:
if alpha > ½, T reaches past the midpoint into Q, so Q's colour moves towards P's by
(alpha − ½); otherwise P's colour moves towards Q's by (½ − alpha). The result is
continuous in the vertex positions, and its gradient reaches the edge's vertices.

Use it as the last image-space step: shade and composite *then* antialias, then the loss.
Masking or compositing after antialiasing discards the edge blend and with it the
visibility gradient. Owns ``image`` (H, W, 3) with gradients.
"""

import functools

import taichi as ti

from .. import backend
from . import arrays
from .arrays import IVec3, Vec4
from .silhouette import check_pair_inputs, pair_crossing


@functools.cache
def _blend_kernel(n_channels: int, real):
    """The edge blend for colours of ``n_channels`` components of type ``real`` (compiled
    once per channel count and float type)."""
    Color = arrays.vectors(n_channels, real)

    @ti.kernel
    def blend(color: Color, edges: IVec3, clip: Vec4, height: ti.i32, width: ti.i32, out: Color):
        for i in range(color.shape[0]):
            for d in ti.static(range(2)):
                e = edges[2 * i + d]
                if e[1] >= 0:
                    p, q, alpha = pair_crossing(i, d, e, clip, height, width)
                    alpha = ti.min(ti.max(alpha, 0.0), 1.0)  # in [0, 1] but for nvdiffrast's rules
                    # alpha > ½: the front surface reaches into q; else q's reaches into p
                    to = ti.select(alpha > 0.5, q, p)
                    out[to] += ti.abs(alpha - 0.5) * (color[p + q - to] - color[to])

    return blend


def antialias(color, edges, clip, frame, out) -> None:
    """``out`` = ``color`` with the silhouette edges of ``edges`` blended.

    ``color`` and ``out``: (N,) vectors of any channel count C (Taichi vector ndarrays or
    (N, C) tensors) per pixel of ``frame`` (N = B·H·W); ``edges`` (2·N,) ivec3 from
    :func:`~taichi_dr.render.silhouette.detect`; ``clip`` (B·V,) vec4, the clip
    coordinates the edges were found with. Differentiable (Taichi reverse mode, e.g. under
    ``ti.ad.Tape``) in ``color`` and ``clip``; an input without gradient storage gets none."""
    check_pair_inputs(color, edges, frame, out)
    arrays.copy(color, out)
    blend(color, edges, clip, frame, out)


def antialias_backward(color, edges, clip, frame, out) -> None:
    """The reverse pass of :func:`antialias` (same arguments) outside ``ti.ad.Tape``, e.g.
    in a torch autograd Function: adds ``out.grad`` pulled back into ``color.grad`` and
    ``clip.grad``. The arrays carry their gradients: Taichi ndarrays with gradients, or
    torch tensors with ``requires_grad`` and ``.grad`` set; an input without gets none."""
    blend(color, edges, clip, frame, out, backward=True)
    if color.grad is not None:
        arrays.copy(out.grad, color.grad, add=True)  # the reverse of out = color


def blend(color, edges, clip, frame, out, backward: bool = False) -> None:
    """The edge blend alone: adds the silhouette blend of ``color`` into ``out``, which
    holds ``color`` already (:func:`antialias` is ``out = color`` and this). Same arrays
    as :func:`antialias`; ``backward=True`` adds ``out.grad`` through the blend (not
    through ``out = color``) into ``color.grad`` and ``clip.grad``."""
    kernel = _blend_kernel(check_pair_inputs(color, edges, frame, out), backend.real())
    (kernel.grad if backward else kernel)(color, edges, clip, frame.height, frame.width, out)
