"""Neural 3D Mesh Renderer gradients (Kato et al. 2018): a hard forward image with
approximate visibility gradients.

The forward pass returns the colours unchanged. Backward, for every pixel pair (P, Q)
straddling a silhouette edge of the front triangle T (see ``silhouette``), with the edge
at ``alpha`` from P's centre: moving the edge forward by 1 − alpha would paint Q with
P's colour, moving it back by alpha would paint P with Q's. Each of these two jumps is
turned into a slope (colour change / distance) and, as in NMR, used only when it lowers
the loss (∂L/∂I · ΔI < 0). The slope w.r.t. alpha reaches the edge's vertices through
the differentiable crossing point. This is NMR restricted to the pixels next to the
edge (the original also spreads the step to pixels further along the row); colour
gradients pass straight through.

Owns ``image`` (H, W, 3) with gradients.
"""

import functools

import taichi as ti

from .. import backend
from . import arrays
from .arrays import IVec3, Vec4, check_length
from .silhouette import check_pair_inputs, crossing_grad, pair_crossing

MIN_DISTANCE = 0.05  # pixels: bounds the slope of an edge sitting on a pixel centre


@functools.cache
def _edge_kernel(n_channels: int, real):
    """NMR's edge gradient for colours of ``n_channels`` components of type ``real``."""
    Color = arrays.vectors(n_channels, real)

    @ti.kernel
    def edge_gradient(
        color: Color,
        image_grad: Color,
        edges: IVec3,
        clip: Vec4,
        height: ti.i32,
        width: ti.i32,
        clip_grad: Vec4,
    ):
        for i in range(color.shape[0]):
            for d in ti.static(range(2)):
                e = edges[2 * i + d]
                if e[1] >= 0:
                    p, q, alpha = pair_crossing(i, d, e, clip, height, width)
                    step = color[p] - color[q]
                    slope = 0.0  # ∂L/∂alpha
                    cover = image_grad[q].dot(step)  # ΔL if q took p's colour
                    if cover < 0.0:
                        slope += cover / ti.max(1.0 - alpha, MIN_DISTANCE)
                    uncover = image_grad[p].dot(step)  # −ΔL if p took q's colour
                    if uncover > 0.0:
                        slope += uncover / ti.max(alpha, MIN_DISTANCE)
                    if slope != 0.0:
                        _, y, x = arrays.pixel(i, height, width)
                        g0, g1 = crossing_grad(clip[e[1]], clip[e[2]], y, x, d, e[0], width, height)
                        clip_grad[e[1]] += slope * g0
                        clip_grad[e[2]] += slope * g1

    return edge_gradient


@ti.ad.grad_replaced
def nmr(color, edges, clip, frame, out) -> None:
    """``out`` = ``color`` ((N,) vectors of any channel count, N = B·H·W pixels of
    ``frame``); under ``ti.ad.Tape`` the backward pass is :func:`nmr_backward` with the
    gradients of the Taichi ndarrays ``out``, ``color`` and ``clip`` (those without
    gradient storage are skipped). ``edges`` (2·N,) ivec3 from
    :func:`~taichi_dr.render.silhouette.detect`; ``clip`` (B·V,) vec4."""
    check_pair_inputs(color, edges, frame, out)
    arrays.copy(color, out)


@ti.ad.grad_for(nmr)
def _nmr_grad(color, edges, clip, frame, out) -> None:
    nmr_backward(color, edges, clip, frame, out.grad, color.grad, clip.grad)


def nmr_backward(color, edges, clip, frame, out_grad, color_grad=None, clip_grad=None) -> None:
    """NMR's backward pass: adds into ``color_grad`` (N,) (the image gradient
    ``out_grad`` passes straight through) and ``clip_grad`` (B·V,) vec4 (the edge
    gradients, see the module docstring). Either may be None (not wanted)."""
    edge_gradient = _edge_kernel(check_pair_inputs(color, edges, frame, out_grad), backend.real())
    if color_grad is not None:
        arrays.copy(out_grad, color_grad, add=True)
    if clip_grad is not None:
        check_length(clip_grad, clip.shape[0], "clip_grad", "one per clip vertex")
        edge_gradient(color, out_grad, edges, clip, frame.height, frame.width, clip_grad)
