"""Tile binning and front-to-back compositing of projected Gaussians, with a hand-written
backward pass.

**Binning.** Records are sorted by camera depth with the project's stable radix sort
(:func:`taichi_dr.discrete.argsort`: equal depths keep index order), each record then emits
one (tile, record) pair per 16×16 tile its pixel box touches, in that depth order, and one
stable counting pass by tile (:func:`taichi_dr.discrete.counting_pass`, bucket = camera ·
tiles + tile) groups the pairs per tile without changing their depth order. So every tile
holds its Gaussians front to back, and ``tile_start`` delimits each tile's list.

**Compositing** — one thread per tile (it owns its pixels) walks the tile's list front to
back and, for each Gaussian, only the pixels inside the tile that its ellipse of
α ≥ 1/255 covers (row by row, from ``spans``, :mod:`.project`). Per pixel, with
d = pixel centre − mean2d:

    σ = ½ (a dx² + c dy²) + b dx dy,   α = min(0.99, o e^{−σ});  skip if σ < 0 or α < 1/255;
    T_next = T (1 − α); if T_next ≤ 10⁻⁴ the pixel stops *before* this Gaussian;
    C += α T f (every feature channel f);  finally C += T_final · background.

It stores T_final and ``last`` (1 + the list position of the last contributor).

**Backward** — the same thread walks the list back to front, skipping positions ≥ ``last``
and the same σ/α tests, recovers T_i = T_{i+1} / (1 − α_i), and keeps the features
composited behind, S = Σ_{j>i} α_j T_j f_j:

    ∂L/∂f_i = α_i T_i ∂L/∂C,
    ∂L/∂α_i = Σ_ch ∂L/∂C (T_i f_i − (S + T_final bg) / (1 − α_i)) + ∂L/∂A · T_final / (1 − α_i),

then α → (o, σ) (zero where the 0.99 clamp is active) → (mean2d, conic). Gradients of one
Gaussian are summed over the tile's pixels first and added to its record once per tile.
Taichi's reverse mode cannot do this loop (``exp`` in a runtime loop: TAICHI_NOTES §6).
"""

import taichi as ti

from .. import arrays, backend
from ..discrete import argsort, counting_pass, exclusive_scan
from .project import ALPHA_MIN, BOX_PAD, TILE

ALPHA_MAX = 0.99
T_MIN = 1e-4
I32 = ti.types.ndarray(dtype=ti.i32, ndim=1)
I32_2D = ti.types.ndarray(dtype=ti.i32, ndim=2)


def _tiles_per_task() -> int:
    """Tiles handed to a CPU thread at a time (a range-for otherwise gives each thread
    ≥ 512 consecutive iterations: TAICHI_NOTES §11); GPU blocks of 64 tiles."""
    return 2 if backend.current_arch() == "cpu" else 64


# ------------------------------------------------------------------------ binning
@ti.kernel
def _gather_counts(perm: I32, tiles: I32, out: I32):
    for j in range(perm.shape[0]):
        out[j] = tiles[perm[j]]


@ti.kernel
def _emit_pairs(
    perm: I32,
    offsets: I32,
    boxes: I32_2D,
    N: ti.i32,
    tiles_x: ti.i32,
    tiles_per_camera: ti.i32,
    keys: I32,
    values: I32,
):
    for j in range(perm.shape[0]):
        i = perm[j]
        o = offsets[j]
        if boxes[i, 2] >= boxes[i, 0]:
            base = (i // N) * tiles_per_camera
            for ty in range(boxes[i, 1] // TILE, boxes[i, 3] // TILE + 1):
                for tx in range(boxes[i, 0] // TILE, boxes[i, 2] // TILE + 1):
                    keys[o] = base + ty * tiles_x + tx
                    values[o] = i
                    o += 1


def bin_tiles(depths, tiles, boxes, C: int, N: int, width: int, height: int):
    """(tile_start (C·T + 1), ids (M)): the records of tile b = c·T + t, front to back, are
    ``ids[tile_start[b]:tile_start[b + 1]]``."""
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    T = tiles_x * tiles_y
    perm = argsort(depths, check_nan=False)  # inputs were checked: depths are finite
    offsets = arrays.empty(tiles, (C * N,), "i32")
    _gather_counts(perm, tiles, offsets)
    M = exclusive_scan(offsets, C * N)
    keys, values = arrays.empty(tiles, (M,), "i32"), arrays.empty(tiles, (M,), "i32")
    _emit_pairs(perm, offsets, boxes, N, tiles_x, T, keys, values)
    ids = arrays.empty(tiles, (M,), "i32")
    tile_start = counting_pass(keys, values, M, 0, -1, C * T, ids)
    return tile_start, ids


# ------------------------------------------------------------------------ compositing
@ti.func
def _tile_rect(ct, tiles_x, tiles_y, width, height):
    T = tiles_x * tiles_y
    c = ct // T
    t = ct - c * T
    ty = t // tiles_x
    x0, y0 = (t - ty * tiles_x) * TILE, ty * TILE
    return c, x0, y0, ti.min(x0 + TILE, width) - 1, ti.min(y0 + TILE, height) - 1


@ti.func
def _load(params: ti.template(), spans: ti.template(), feats: ti.template(), g, D: ti.template()):
    """Record g's (u, v, a, b, c, o), span terms and features as locals: loaded once per
    (tile, Gaussian), not once per pixel (the compiler cannot hoist the ndarray loads past
    the pixel writes)."""
    q = ti.Vector([params[g, k] for k in ti.static(range(6))], float)
    sp = ti.Vector([spans[g, k] for k in ti.static(range(3))], float)
    f = ti.Vector([feats[g, k] for k in ti.static(range(D))], float)
    return q, sp, f


@ti.func
def _row(q, sp, y, lo, hi):
    """Columns [xa, xb] of row y inside [lo, hi] that the Gaussian (q, sp) can reach with
    α ≥ 1/255 (its padded ellipse; empty: xa > xb)."""
    dy = y + 0.5 - q[1]
    h2 = sp[1] - sp[2] * dy * dy
    xa, xb = 1, 0
    if h2 >= 0:
        h = ti.sqrt(h2) + BOX_PAD[1]
        centre = q[0] + sp[0] * dy - 0.5
        xa = ti.max(lo, ti.cast(ti.ceil(ti.max(centre - h, lo - 1.0)), ti.i32))
        xb = ti.min(hi, ti.cast(ti.floor(ti.min(centre + h, hi + 1.0)), ti.i32))
    return xa, xb


@ti.func
def _alpha(q, x, y):
    """(σ, e^{−σ}, α, dx, dy) of the Gaussian (u, v, a, b, c, o) = q at pixel (x, y)."""
    dx = x + 0.5 - q[0]
    dy = y + 0.5 - q[1]
    sigma = 0.5 * (q[2] * dx * dx + q[4] * dy * dy) + q[3] * dx * dy
    G = ti.exp(-sigma)
    return sigma, G, ti.min(ALPHA_MAX, q[5] * G), dx, dy


@ti.kernel
def composite_forward(
    tile_start: I32,
    ids: I32,
    params: ti.types.ndarray(ndim=2),
    feats: ti.types.ndarray(ndim=2),
    boxes: I32_2D,
    spans: ti.types.ndarray(ndim=2),
    background: ti.types.ndarray(ndim=2),
    width: ti.i32,
    height: ti.i32,
    D: ti.template(),
    out: ti.types.ndarray(ndim=1),
    trans: ti.types.ndarray(ndim=1),
    last: I32,
):
    """``out`` (C·H·W·D), ``trans`` = T_final (C·H·W) and ``last`` (C·H·W), flat."""
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    ti.loop_config(block_dim=ti.static(_tiles_per_task()))
    for ct in range(tile_start.shape[0] - 1):
        c, x0, y0, x1, y1 = _tile_rect(ct, tiles_x, tiles_y, width, height)
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                p = (c * height + y) * width + x
                trans[p] = 1.0  # negative once the pixel has stopped
                last[p] = 0
                for ch in ti.static(range(D)):
                    out[p * D + ch] = 0.0
        left = (x1 - x0 + 1) * (y1 - y0 + 1)  # pixels still running
        start = tile_start[ct]
        for k in range(start, tile_start[ct + 1]):
            if left == 0:
                break
            g = ids[k]
            q, sp, f = _load(params, spans, feats, g, D)
            lo, hi = ti.max(boxes[g, 0], x0), ti.min(boxes[g, 2], x1)
            for y in range(ti.max(boxes[g, 1], y0), ti.min(boxes[g, 3], y1) + 1):
                xa, xb = _row(q, sp, y, lo, hi)
                for x in range(xa, xb + 1):
                    p = (c * height + y) * width + x
                    T = trans[p]
                    if T > 0:
                        sigma, _, alpha, _, _ = _alpha(q, x, y)
                        if sigma >= 0 and alpha >= ALPHA_MIN:
                            t_next = T * (1.0 - alpha)
                            if t_next <= T_MIN:
                                trans[p] = -T
                                left -= 1
                            else:
                                w = alpha * T
                                for ch in ti.static(range(D)):
                                    out[p * D + ch] = out[p * D + ch] + w * f[ch]
                                trans[p] = t_next
                                last[p] = k - start + 1
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                p = (c * height + y) * width + x
                T = ti.abs(trans[p])
                trans[p] = T
                for ch in ti.static(range(D)):
                    out[p * D + ch] = out[p * D + ch] + T * background[c, ch]


@ti.kernel
def composite_backward(
    tile_start: I32,
    ids: I32,
    params: ti.types.ndarray(ndim=2),
    feats: ti.types.ndarray(ndim=2),
    boxes: I32_2D,
    spans: ti.types.ndarray(ndim=2),
    background: ti.types.ndarray(ndim=2),
    width: ti.i32,
    height: ti.i32,
    D: ti.template(),
    trans: ti.types.ndarray(ndim=1),
    last: I32,
    g_out: ti.types.ndarray(ndim=1),
    g_alpha: ti.types.ndarray(ndim=1),
    t_run: ti.types.ndarray(ndim=1),
    behind: ti.types.ndarray(ndim=1),
    g_params: ti.types.ndarray(ndim=2),
    g_feats: ti.types.ndarray(ndim=2),
    g_background: ti.types.ndarray(ndim=2),
):
    """Accumulates into g_params (N·C, 6: mean2d, conic, opacity), g_feats and
    g_background (all zeroed by the caller); ``t_run``, ``behind`` are scratch of the
    sizes of ``trans`` and ``g_out``. ``g_alpha`` is ∂L/∂(1 − T_final)."""
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    ti.loop_config(block_dim=ti.static(_tiles_per_task()))
    for ct in range(tile_start.shape[0] - 1):
        c, x0, y0, x1, y1 = _tile_rect(ct, tiles_x, tiles_y, width, height)
        g_bg = ti.Vector.zero(float, D)
        bg = ti.Vector([background[c, ch] for ch in ti.static(range(D))], float)
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                p = (c * height + y) * width + x
                t_run[p] = trans[p]
                for ch in ti.static(range(D)):
                    behind[p * D + ch] = 0.0
                    g_bg[ch] += trans[p] * g_out[p * D + ch]
        for ch in ti.static(range(D)):
            ti.atomic_add(g_background[c, ch], g_bg[ch])
        start, end = tile_start[ct], tile_start[ct + 1]
        for kk in range(end - start):
            k = end - 1 - kk
            g = ids[k]
            gu, gv, ga, gb, gc, go = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            gf = ti.Vector.zero(float, D)
            touched = False
            q, sp, f = _load(params, spans, feats, g, D)
            lo, hi = ti.max(boxes[g, 0], x0), ti.min(boxes[g, 2], x1)
            for y in range(ti.max(boxes[g, 1], y0), ti.min(boxes[g, 3], y1) + 1):
                xa, xb = _row(q, sp, y, lo, hi)
                for x in range(xa, xb + 1):
                    p = (c * height + y) * width + x
                    if k - start < last[p]:
                        sigma, G, alpha, dx, dy = _alpha(q, x, y)
                        if sigma >= 0 and alpha >= ALPHA_MIN:
                            touched = True
                            one_minus = 1.0 - alpha
                            T = t_run[p] / one_minus
                            t_run[p] = T
                            t_final = trans[p]
                            g_a = g_alpha[p] * t_final / one_minus
                            for ch in ti.static(range(D)):
                                g_c = g_out[p * D + ch]
                                gf[ch] += alpha * T * g_c
                                s = behind[p * D + ch]
                                g_a += g_c * (T * f[ch] - (s + t_final * bg[ch]) / one_minus)
                                behind[p * D + ch] = s + alpha * T * f[ch]
                            if q[5] * G < ALPHA_MAX:  # the clamp passes no gradient
                                go += g_a * G
                                g_s = -g_a * alpha  # ∂α/∂σ = −o e^{−σ} = −α
                                gu -= g_s * (q[2] * dx + q[3] * dy)
                                gv -= g_s * (q[3] * dx + q[4] * dy)
                                ga += 0.5 * g_s * dx * dx
                                gb += g_s * dx * dy
                                gc += 0.5 * g_s * dy * dy
            if touched:
                ti.atomic_add(g_params[g, 0], gu)
                ti.atomic_add(g_params[g, 1], gv)
                ti.atomic_add(g_params[g, 2], ga)
                ti.atomic_add(g_params[g, 3], gb)
                ti.atomic_add(g_params[g, 4], gc)
                ti.atomic_add(g_params[g, 5], go)
                for ch in ti.static(range(D)):
                    ti.atomic_add(g_feats[g, ch], gf[ch])
