"""Soft rasterizer, part 2: candidate selection (not differentiable), and the work buffers.

Array version (issue 13) of ``soft.SoftRasterizer.select``, for a batch of views.
:class:`SoftCandidates` owns every work buffer of the soft rasterizer and grows them
when a batch needs more (allocation only: the kernels compile once per arch and float
type); the blend (``soft_blend``) borrows them.

``select`` keeps, for each pixel, the K faces nearest in depth among those inside or
within the cutoff distance r = sqrt(σ ln(1/cutoff − 1)) of the pixel centre (so that
D ≥ cutoff), in two steps that are O(pairs + faces), with one thread per tile, face or
pixel and no per-pair atomics (a pair: a pixel and one of its candidate faces):

* Binning: each (view, face) *draw* gets its screen box dilated by r; every 8×8-pixel
  tile under the box gives a *slot* (draw, tile), numbered draw by draw (so in face
  order within a view); serial passes list each tile's slots in that order (for the
  blend) and nearest first (for selection).
* One thread per tile then goes face by face over its slots, nearest first (by each
  face's least vertex depth, its *key*): each pixel keeps the first K faces within reach
  (with its depth there) and, once more than K are (the pixel *overflows*), replaces
  its farthest one (the largest (depth, face id)) by a nearer face, so it ends
  with the K least (depth, face id) whatever the order. The order makes depth-bounded
  rejection pay: an interpolated depth is never below the key (up to rounding, allowed
  for by ``NEAR_MARGIN``), so an overflowed pixel skips a face whose key is beyond its
  farthest candidate; a face whose box in the tile holds only
  such pixels is skipped whole, and once every pixel of the tile overflowed the first
  such face ends the tile (all later keys are larger). Exact: the same candidates as
  looking at every face. The pixels of a row of the tile are tested side by side (8
  lanes of SIMD arithmetic: distance, depth), the candidate lists updated pixel by
  pixel after; a row is skipped before that when all its pixels in the face's box skip
  the face by depth, or when a cheap conservative test (``_row_out_of_reach``: beyond
  one edge's line or away from the face's bounding box by more than r) shows it out
  of reach (about 30 % of the rows on a dense mesh).
  Bit (y % 8)·8 + x % 8 of a slot's 64-bit mask marks the tile's pixels that kept its
  face; pairs are numbered tile by tile, slot by slot in draw order, in mask-bit order
  (``slot_pairs``: each slot's first pair), which is how the blend finds each pair's
  record; the blend walks each tile's slots in draw order.

Layout (``arrays``): views b = 0..B−1 of H × W pixels, pixel index i = (b·H + y)·W + x;
clip (B·V,) vec4; faces (F,) ivec3; ranges (B,) ivec2 = (start, count) per view. Draw
r = b·F_max + j is face ranges[b].start + j of view b (F_max: the largest count). Faces
with a vertex on the camera side of the near plane (z < −w) or entirely beyond the far
plane are not drawn (no clipping in this mode).
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .arrays import Frame
from .soft_faces import (
    NUM_PARAMS,
    RADIUS,
    RADIUS2,
    U64,
    Int,
    IVec2,
    IVec3,
    IVec4,
    Mat3,
    Mat32,
    Real,
    Vec3,
    Vec4,
    barycentrics,
    distance,
    face_records,
    iso_scale,
    pixel_center,
    pixel_step,
)

MASK_TILE = 8  # tile edge in pixels, fixed: a tile's 64 pixels are the bits of one u64 mask
# relative rounding allowance of a depth interpolated with clamped barycentrics below its
# face's least vertex depth: about 8 ulps (4 for the barycentrics' sum, 3 for the dot
# product, 1 for the product with the margin); these are 64
NEAR_MARGIN = {"f32": 2.0**-18, "f64": 2.0**-47}
# relative allowance for rounding of ``_row_out_of_reach``, far above the exact reach
# test's (a few ulps): a row is skipped only when it is this much beyond the reach
REACH_MARGIN = 2.0**-10
MAX_PAIRS = 1 << 30  # (pixel, candidate) slots B·H·W·K; more would not fit int32 indices
# the per-draw records of ``soft_faces`` and their element shapes
RECORDS = {"screen": (3, 2), "line": (3, 3), "along": (3, 3), "bary": (3, 3), "depth": (3,)}


def tile_block() -> int:
    """Tiles per parallel task: small on CPUs (2 threads), larger on GPUs."""
    return 16 if backend.current_arch() == "cpu" else 64


@ti.func
def tile_origin(t: ti.i32, tiles_x: ti.i32, tiles_y: ti.i32):
    """View, first row and first column of tile t (numbered view by view, row by row)."""
    per_view = tiles_x * tiles_y
    b = t // per_view
    local = t - b * per_view
    ty = local // tiles_x
    return b, ty * MASK_TILE, (local - ty * tiles_x) * MASK_TILE


@ti.func
def box_tiles(box):
    """Tile range (tx0, ty0, tx1, ty1) of a pixel box (x0, y0, x1, y1); empty when
    tx0 > tx1."""
    t = box // MASK_TILE
    return ti.select(box[0] <= box[2] and box[1] <= box[3], t, ti.Vector([0, 0, -1, -1]))


@ti.func
def next_pixel(bits):
    """The lowest set bit of a non-zero tile mask: (bits without it, the bit's index
    row · 8 + column in the tile)."""
    low = bits & (~bits + ti.u64(1))
    return bits ^ low, ti.cast(63 - ti.math.clz(low), ti.i32)


@ti.func
def _face_box(c: ti.template(), height, width, r_px):
    """The pixel box (x0, y0, x1, y1), inclusive, of the face with clip coordinates c
    (3 rows of 4) dilated by r_px pixels; empty (0, 0, −1, −1) when it is not drawn."""
    box = ti.Vector([0, 0, -1, -1])
    ok = True
    beyond = 0
    lo = ti.Vector([math.inf, math.inf])
    hi = -lo
    for k in ti.static(range(3)):
        ok = ok and c[k, 3] > 0.0 and c[k, 2] >= -c[k, 3]
        beyond += ti.cast(c[k, 2] > c[k, 3], ti.i32)
        if c[k, 3] > 0.0:
            x = (c[k, 0] / c[k, 3] * 0.5 + 0.5) * width
            y = (0.5 - c[k, 1] / c[k, 3] * 0.5) * height
            lo, hi = ti.min(lo, ti.Vector([x, y])), ti.max(hi, ti.Vector([x, y]))
    if ok and beyond < 3:
        # pixels whose centre x + 0.5 lies in [lo − r, hi + r]
        a = ti.ceil(ti.max(lo - r_px - 0.5, -1.0))
        e = ti.floor(ti.min(hi + r_px - 0.5, ti.Vector([width, height])))
        box = ti.Vector(
            [
                ti.max(ti.cast(a[0], ti.i32), 0),
                ti.max(ti.cast(a[1], ti.i32), 0),
                ti.min(ti.cast(e[0], ti.i32), width - 1),
                ti.min(ti.cast(e[1], ti.i32), height - 1),
            ]
        )
    return box


@ti.kernel
def write_face_records(
    clip: Vec4,
    faces: IVec3,
    ranges: IVec2,
    vertices: ti.i32,
    fmax: ti.i32,
    height: ti.i32,
    width: ti.i32,
    params: Real,
    screen: Mat32,
    line: Mat3,
    along: Mat3,
    bary: Mat3,
    depth: Vec3,
    box: IVec4,
    with_boxes: ti.template(),
):
    """The records (``soft_faces``) of every draw, and ``with_boxes`` its pixel box
    dilated by the reach r (selection only: the blend walks the boxes selection saw)."""
    for r in range(ranges.shape[0] * fmax):
        b = r // fmax
        j = r - b * fmax
        out = ti.Vector([0, 0, -1, -1])
        if j < ranges[b][1]:
            idx = faces[ranges[b][0] + j] + b * vertices
            c = ti.Matrix.rows([clip[idx[0]], clip[idx[1]], clip[idx[2]]])
            rec = face_records(c, iso_scale(height, width))
            screen[r], line[r], along[r], bary[r], depth[r] = rec
            if ti.static(with_boxes):
                out = _face_box(c, height, width, params[RADIUS] * ti.min(width, height) / 2)
        if ti.static(with_boxes):
            box[r] = out


@ti.kernel
def _bin_count(
    box: IVec4,
    n_records: ti.i32,
    fmax: ti.i32,
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    n_tiles: ti.i32,
    slot_start: Int,
    tile_start: Int,
) -> ti.i32:
    """Slots: one per (draw, tile under its box), numbered draw by draw. Returns the
    number of slots; ``tile_start`` gets each tile's first entry in ``tile_slots``."""
    for t in range(n_tiles + 1):
        tile_start[t] = 0
    slot_start[0] = 0
    ti.loop_config(serialize=True)
    for r in range(n_records):
        first = r // fmax * tiles_x * tiles_y  # the view's first tile
        b = box_tiles(box[r])
        slot_start[r + 1] = slot_start[r] + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        for ty in range(b[1], b[3] + 1):
            for tx in range(b[0], b[2] + 1):
                t = first + ty * tiles_x + tx + 1
                tile_start[t] = tile_start[t] + 1  # serial: no atomic add needed
    ti.loop_config(serialize=True)
    for t in range(n_tiles):
        tile_start[t + 1] += tile_start[t]
    return slot_start[n_records]


@ti.kernel
def _depth_keys(box: IVec4, depth: Vec3, n_records: ti.i32, keys: Real):
    """Each draw's nearest eye depth (its vertices' least clip w; +inf when not drawn)."""
    for r in range(n_records):
        b = box[r]
        keys[r] = ti.select(b[0] <= b[2], ti.min(depth[r][0], depth[r][1], depth[r][2]), math.inf)


@ti.func
def _append_slots(r, fmax, tiles_x, tiles_y, box: ti.template(), slot_start: ti.template(),
                  tile_fill: ti.template(), fill: ti.i32, out: ti.template()):  # fmt: skip
    """Append draw r's slots to the lists ``out`` of the tiles t under its box (their
    ends: ``tile_fill[fill + t]``)."""
    first = r // fmax * tiles_x * tiles_y
    b = box_tiles(box[r])
    j = slot_start[r]
    for ty in range(b[1], b[3] + 1):
        for tx in range(b[0], b[2] + 1):
            t = first + ty * tiles_x + tx
            out[tile_fill[fill + t]] = j
            tile_fill[fill + t] = tile_fill[fill + t] + 1
            j += 1


@ti.kernel
def _bin_fill(
    box: IVec4,
    n_records: ti.i32,
    fmax: ti.i32,
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    n_tiles: ti.i32,
    slot_start: Int,
    tile_start: Int,
    tile_fill: Int,
    order: Int,
    tile_slots: Int,
    tile_near: Int,
    slot_draw: Int,
):
    """Each tile's slots, in ascending draw order (``tile_slots``, for the blend) and
    nearest first (``tile_near``, for selection: the draws taken in ``order``); each
    slot's draw (``slot_draw``)."""
    for r in range(n_records):
        for j in range(slot_start[r], slot_start[r + 1]):
            slot_draw[j] = r
    for t in range(n_tiles):
        tile_fill[t] = tile_start[t]
        tile_fill[n_tiles + t] = tile_start[t]
    ti.loop_config(block_dim=1)
    for which in range(2):  # the two lists side by side (two threads), each in order
        for n in range(n_records):
            if which == 0:
                _append_slots(n, fmax, tiles_x, tiles_y, box, slot_start, tile_fill, 0, tile_slots)
            else:
                _append_slots(order[n], fmax, tiles_x, tiles_y, box, slot_start, tile_fill,
                              n_tiles, tile_near)  # fmt: skip


@ti.func
def _row_out_of_reach(screen: ti.template(), line: ti.template(), qy, qxa, qxb, r):
    """Whether the whole row segment from (qxa, qy) to (qxb, qy) (isotropic screen units)
    lies beyond r (with ``REACH_MARGIN``) of the face with records ``screen`` and ``line``
    (``soft_faces``): outside one edge's line, or away from the face's bounding box (a
    cheap, conservative test before the exact one; the face lies on the inner side of
    each line)."""
    reach = r * (1.0 + REACH_MARGIN)
    lo_x = ti.min(screen[0, 0], screen[1, 0], screen[2, 0])
    hi_x = ti.max(screen[0, 0], screen[1, 0], screen[2, 0])
    lo_y = ti.min(screen[0, 1], screen[1, 1], screen[2, 1])
    hi_y = ti.max(screen[0, 1], screen[1, 1], screen[2, 1])
    dx = ti.max(lo_x - qxb, qxa - hi_x, 0.0)
    dy = ti.max(lo_y - qy, qy - hi_y, 0.0)
    out = dx * dx + dy * dy > reach * reach
    for k in ti.static(range(3)):  # the largest signed distance along the row: an end
        a = line[k, 0]
        out = out | (ti.max(a * qxa, a * qxb) + line[k, 1] * qy + line[k, 2] < -reach)
    return out


@ti.func
def _find_farthest(
    candidates: ti.template(), candidate_depth: ti.template(), farthest: ti.template(),
    limit: ti.template(), i, K,
):  # fmt: skip
    """Pixel i's farthest candidate, the largest (depth, slot): its index k < K into
    ``farthest[i]``, its depth into ``limit[i]``. Two passes: the largest depth (a
    reduction without branches), then the largest slot at that depth (ties are rare)."""
    base = i * K
    z_max = candidate_depth[base]
    for k in range(1, K):
        z_max = ti.max(z_max, candidate_depth[base + k])
    worst, found = 0, False
    for k in range(K):
        if candidate_depth[base + k] == z_max:
            if not found or candidates[base + k] > candidates[base + worst]:
                worst, found = k, True
    farthest[i] = worst
    limit[i] = z_max


@ti.kernel
def _select(
    ranges: IVec2,
    fmax: ti.i32,
    height: ti.i32,
    width: ti.i32,
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    n_tiles: ti.i32,
    K: ti.i32,
    params: Real,
    box: IVec4,
    screen: Mat32,
    line: Mat3,
    along: Mat3,
    bary: Mat3,
    depth: Vec3,
    keys: Real,
    tile_start: Int,
    tile_slots: Int,
    tile_near: Int,
    slot_draw: Int,
    mask: U64,
    candidates: Int,
    candidate_depth: Real,
    count: Int,
    farthest: Int,
    limit: Real,
    nearest: Real,
    overflow: Int,
    n_slots: ti.i32,
    tile_pairs: Int,
    slot_pairs: Int,
) -> ti.types.vector(2, ti.i32):
    """One thread per tile (it owns its pixels and its slots' masks), nearest draw first
    (``tile_near``): each pixel keeps the first K faces within reach and their depths;
    once more than K are (it *overflows*), a nearer face replaces the
    farthest (``farthest``: its index, ``limit``: its depth), so the K kept are the least
    (depth, slot) in any processing order. Candidates are slots until the end, then face ids; bit
    (y % 8) · 8 + x % 8 of a slot's mask marks the pixels that kept it.

    Depth-bounded rejection, exact: a face's depth anywhere is at least its key (its
    least vertex depth) up to rounding, so once a pixel overflowed, a face whose key,
    lowered by ``NEAR_MARGIN``, exceeds the pixel's farthest depth is skipped; once
    every pixel of the tile overflowed and the key exceeds an upper bound of all their
    farthest depths, so do all later (farther-keyed) faces: the tile is done. Then each
    pixel's nearest candidate depth (``nearest``, +inf without one: the blend's softmax
    shift) and each slot's first pair (``slot_pairs``); returns (pairs, pixels that
    overflowed)."""
    overflow[0] = 0
    ti.loop_config(block_dim=ti.static(tile_block()))
    for t in range(n_tiles):
        scale, step = iso_scale(height, width), pixel_step(height, width)
        radius, r2 = params[RADIUS], params[RADIUS2]
        lower = 1.0 - ti.static(NEAR_MARGIN[backend.precision()])
        v, y0, x0 = tile_origin(t, tiles_x, tiles_y)
        y1, x1 = ti.min(y0 + MASK_TILE, height) - 1, ti.min(x0 + MASK_TILE, width) - 1
        pixels = ti.u64(0)  # the tile's pixels inside the image
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                count[(v * height + y) * width + x] = 0
                pixels |= ti.u64(1) << ti.u64((y - y0) * MASK_TILE + x - x0)
        full = ti.u64(0)  # pixels that had more than K faces within reach
        bound = math.inf  # ≥ the farthest depth of every pixel in ``full``
        tight = False  # whether ``bound`` is their maximum (no change since)
        stop = tile_start[t + 1]  # the first slot not looked at
        for n in range(tile_start[t], tile_start[t + 1]):
            slot = tile_near[n]
            r = slot_draw[slot]
            near = keys[r] * lower
            b = box[r]
            if full != ti.u64(0):  # else no pixel can skip the face
                ya, yb = ti.max(b[1], y0) - y0, ti.min(b[3], y1) - y0
                xa, xb = ti.max(b[0], x0) - x0, ti.min(b[2], x1) - x0
                row = ((ti.u64(1) << ti.u64(xb - xa + 1)) - ti.u64(1)) << ti.u64(xa)
                covered = ti.u64(0)  # the pixels of the face's box in this tile
                for y in range(ya, yb + 1):
                    covered |= row << ti.u64(y * MASK_TILE)
                if covered & ~full == ti.u64(0):
                    if near <= bound and not tight:  # tighten the bound
                        bound = -math.inf
                        tight = True
                        rest = full
                        while rest != ti.u64(0):
                            rest, k = next_pixel(rest)
                            i = (v * height + y0 + k // MASK_TILE) * width + x0 + k % MASK_TILE
                            bound = ti.max(bound, limit[i])
                    if near > bound:
                        if full == pixels:
                            stop = n
                            break
                        mask[slot] = ti.u64(0)
                        continue
            s, ln, al, ba, zr = screen[r], line[r], along[r], bary[r], depth[r]
            xa, xb = ti.max(b[0], x0) - x0, ti.min(b[2], x1) - x0
            in_box = ((1 << (xb - xa + 1)) - 1) << xa  # the box's columns in the tile
            bits = ti.u64(0)
            for y in range(ti.max(b[1], y0), ti.min(b[3], y1) + 1):
                row = y - y0
                first = (v * height + y) * width + x0  # the row's first pixel
                full_row = ti.cast((full >> ti.u64(row * MASK_TILE)) & ti.u64(0xFF), ti.i32)
                skip = 0  # the overflowed pixels whose farthest candidate is nearer
                for x in ti.static(range(MASK_TILE)):  # (beyond the image: in the padding)
                    far = ((full_row >> x) & 1 != 0) & (near > limit[first + x])
                    skip |= ti.select(far, 1 << x, 0)
                if in_box & ~skip == 0:
                    continue
                ends = (
                    pixel_center(y, x0 + xa, step) * scale,
                    pixel_center(y, x0 + xb, step) * scale,
                )
                if _row_out_of_reach(s, ln, ends[0][1], ends[0][0], ends[1][0], radius):
                    continue
                # the row's 8 pixels side by side (SIMD): which are within reach, and the
                # face's depth at each
                reach = 0
                z = ti.Vector.zero(float, MASK_TILE)
                for x in ti.static(range(MASK_TILE)):
                    p = pixel_center(y, x0 + x, step)
                    d2, inside = distance(s, ln, al, p * scale)[:2]
                    z[x] = barycentrics(ba, p)[0].dot(zr)
                    # (bitwise operators: ``and`` and ``or`` would branch)
                    reach |= ti.select(inside | (d2 <= r2), 1 << x, 0)
                reach &= in_box & ~skip
                while reach != 0:
                    x = 31 - ti.cast(ti.math.clz(reach & -reach), ti.i32)
                    reach &= reach - 1
                    i = first + x
                    bit = ti.u64(1) << ti.u64(row * MASK_TILE + x)
                    m = count[i]
                    if m < K:
                        candidates[i * K + m] = slot
                        candidate_depth[i * K + m] = z[x]
                        count[i] = m + 1
                        bits |= bit
                    else:
                        if full & bit == ti.u64(0):  # first overflow
                            full |= bit
                            _find_farthest(candidates, candidate_depth, farthest, limit, i, K)
                            bound = math.inf  # it does not cover this pixel yet
                            tight = False
                        worst = i * K + farthest[i]
                        zw = limit[i]
                        if z[x] < zw or (z[x] == zw and slot < candidates[worst]):
                            evicted = candidates[worst]
                            mask[evicted] = mask[evicted] & ~bit
                            candidates[worst] = slot
                            candidate_depth[worst] = z[x]
                            _find_farthest(candidates, candidate_depth, farthest, limit, i, K)
                            bits |= bit
                            tight = False
            mask[slot] = bits
        for n in range(stop, tile_start[t + 1]):
            mask[tile_near[n]] = ti.u64(0)
        start = ranges[v][0] - v * fmax  # face id = draw + start
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                i = (v * height + y) * width + x
                z_min = math.inf
                for k in range(count[i]):
                    candidates[i * K + k] = slot_draw[candidates[i * K + k]] + start
                    z_min = ti.min(z_min, candidate_depth[i * K + k])
                nearest[i] = z_min
        overflow[0] += ti.cast(ti.math.popcnt(full), ti.i32)
        kept = 0  # the tile's pairs
        for n in range(tile_start[t], tile_start[t + 1]):
            kept += ti.cast(ti.math.popcnt(mask[tile_slots[n]]), ti.i32)
        tile_pairs[t + 1] = kept
    # each slot's first pair: pairs are numbered tile by tile (so that the blend, one
    # thread per tile, writes them in order), slot by slot in draw order, in mask-bit order
    tile_pairs[0] = 0
    ti.loop_config(serialize=True)
    for t in range(n_tiles):  # the tiles' first pairs
        tile_pairs[t + 1] += tile_pairs[t]
    ti.loop_config(block_dim=ti.static(tile_block()))
    for t in range(n_tiles):
        k = tile_pairs[t]
        for n in range(tile_start[t], tile_start[t + 1]):
            slot = tile_slots[n]
            slot_pairs[slot] = k
            k += ti.cast(ti.math.popcnt(mask[slot]), ti.i32)
    slot_pairs[n_slots] = tile_pairs[n_tiles]
    return ti.Vector([tile_pairs[n_tiles], overflow[0]])


def _capacity(n: int) -> int:
    """Buffer length for n items: a power of two, at least 1024 (grown, never shrunk)."""
    return max(1 << max(n - 1, 1).bit_length(), 1024)


def _padded(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` followed by zeros up to length n (a whole buffer for ``from_numpy``)."""
    return np.concatenate([a, np.zeros(n - len(a), a.dtype)])


def host(array) -> np.ndarray:
    """A NumPy copy of a Taichi ndarray, torch tensor or array-like."""
    if isinstance(array, ti.Ndarray):
        return array.to_numpy()
    if hasattr(array, "detach"):  # torch
        return array.detach().cpu().numpy()
    return np.asarray(array)


def length(array) -> int:
    """Number of elements along the first axis (vector elements count once)."""
    return int(array.shape[0])


def check_faces(clip, faces, ranges, frame: Frame) -> tuple[int, int]:
    """Validate a batch's clip coordinates, faces and face ranges against ``frame``;
    returns (vertices per view V, the largest face count F_max). Reads ``ranges``."""
    r = host(ranges).reshape(-1, 2).astype(np.int64)
    views = len(r)
    if views != frame.views or views < 1:
        raise UserError(
            f"ranges has {views} views but the frame has {frame.views}; pass one "
            "(start, count) per view"
        )
    n_faces = length(faces)
    if (r < 0).any() or (r.sum(1) > n_faces).any():
        raise UserError(
            f"face ranges must lie within the {n_faces} faces, got {r.tolist()}; "
            "each view's (start, count) needs 0 ≤ start and start + count ≤ F"
        )
    if length(clip) % views:
        raise UserError(
            f"clip has {length(clip)} vertices, not a multiple of the {views} views; "
            "pass (B·V, 4) clip coordinates"
        )
    return length(clip) // views, int(r[:, 1].max())


class SoftCandidates:
    """The candidate faces of each pixel of a batch of views, and every work buffer of
    the soft rasterizer (grown on demand, never shrunk).

    After :meth:`select`: ``count`` (B·H·W,) int32 and ``candidates`` (B·H·W·K,) int32,
    pixel i's candidate face ids at i·K + k for k < count[i] (later entries unused; the
    buffers may be longer than that); ``num_pairs`` (Σ count) and ``truncated`` (pixels
    where more than K faces were within reach: the farthest were dropped — raise K if
    that matters). ``faces`` and ``ranges`` are kept for the blend, which draws the same
    faces. The blend (``soft_blend``) reads the slot
    masks, writes each pair's record and the per-pixel softmax state, and its backward
    pass reads them back: one ``SoftCandidates`` serves one forward/backward at a time.
    """

    def __init__(self):
        self._arrays = {}
        self.frame = None
        self.K = 0
        self.num_pairs = 0
        self.truncated = 0

    def buffer(self, name: str, n: int, element):
        """The work buffer ``name`` (also this object's attribute ``name``) with at least
        n elements of ``element``: re-allocated when shorter (no recompilation)."""
        a = self._arrays.get(name)
        if a is None or a.shape[0] < n:
            a = ti.ndarray(element, shape=_capacity(n))
            self._arrays[name] = a
        setattr(self, name, a)
        return a

    def draws(self) -> tuple:
        """The arguments that describe the draws of the last select: faces, ranges,
        vertices per view V, F_max, H, W."""
        return self.faces, self.ranges, self.vertices, self.fmax, *self.frame.shape()[1:]

    def records(self) -> tuple:
        """The per-draw record buffers (``soft_faces``)."""
        return tuple(getattr(self, name) for name in RECORDS)

    def select(self, clip, faces, ranges, frame: Frame, params, K: int = 50) -> int:
        """Select each pixel's candidate faces (not differentiable) for the views of
        ``frame``: ``clip`` (B·V,) vec4 clip coordinates, ``faces`` (F,) ivec3 (indices
        into a view's V vertices), ``ranges`` (B,) ivec2 (start, count) of the faces each
        view draws, ``params`` from ``soft_faces.soft_params`` (σ and the cutoff set the
        reach). Returns the number of (pixel, face) pairs."""
        if int(K) != K or K < 1:
            raise UserError(f"K (candidate faces per pixel) must be a positive integer, got {K}")
        if length(params) != NUM_PARAMS:
            raise UserError("params must come from soft_faces.soft_params()")
        vertices, fmax = check_faces(clip, faces, ranges, frame)
        if frame.pixels * K > MAX_PAIRS:
            raise UserError(
                f"{frame.views} views of {frame.width}x{frame.height} pixels x K={K} "
                "candidates is too large; lower K, the batch or the resolution"
            )
        backend.ensure_init()
        real, H, W, K = backend.real(), frame.height, frame.width, int(K)
        self.frame, self.K, self.faces, self.ranges = frame, K, faces, ranges
        self.vertices, self.fmax = vertices, fmax
        self.tiles = (W + MASK_TILE - 1) // MASK_TILE, (H + MASK_TILE - 1) // MASK_TILE
        self.n_records = frame.views * fmax
        self.n_tiles = frame.views * self.tiles[0] * self.tiles[1]
        for name, shape in RECORDS.items():
            kind = ti.types.matrix if len(shape) == 2 else ti.types.vector
            self.buffer(name, self.n_records, kind(*shape, real))
        self.buffer("box", self.n_records, ti.types.vector(4, ti.i32))
        write_face_records(clip, *self.draws(), params, *self.records(), self.box, True)
        tiling = (self.n_records, fmax, *self.tiles, self.n_tiles)
        self.buffer("slot_start", self.n_records + 1, ti.i32)
        self.buffer("tile_start", self.n_tiles + 1, ti.i32)
        self.n_slots = _bin_count(self.box, *tiling, self.slot_start, self.tile_start)
        self.buffer("keys", self.n_records, real)
        _depth_keys(self.box, self.depth, self.n_records, self.keys)
        order = np.argsort(self.keys.to_numpy()[: self.n_records], kind="stable")
        self.buffer("order", self.n_records, ti.i32).from_numpy(
            _padded(order.astype(np.int32), self.order.shape[0])
        )
        self.buffer("tile_fill", 2 * self.n_tiles, ti.i32)
        for name in ("tile_slots", "tile_near", "slot_draw"):
            self.buffer(name, self.n_slots, ti.i32)
        _bin_fill(
            self.box, *tiling, self.slot_start, self.tile_start, self.tile_fill, self.order,
            self.tile_slots, self.tile_near, self.slot_draw,
        )  # fmt: skip
        self.buffer("mask", self.n_slots, ti.u64)
        self.buffer("candidates", frame.pixels * K, ti.i32)
        self.buffer("candidate_depth", frame.pixels * K, real)
        self.buffer("count", frame.pixels, ti.i32)
        self.buffer("farthest", frame.pixels, ti.i32)
        self.buffer("limit", frame.pixels + MASK_TILE, real)  # padded for 8-pixel rows
        self.buffer("nearest", frame.pixels, real)
        self.buffer("overflow", 1, ti.i32)
        self.buffer("tile_pairs", self.n_tiles + 1, ti.i32)
        self.buffer("slot_pairs", self.n_slots + 1, ti.i32)
        stats = _select(
            ranges, fmax, H, W, *self.tiles, self.n_tiles, K, params, self.box,
            *self.records()[:5], self.keys, self.tile_start, self.tile_slots, self.tile_near,
            self.slot_draw,
            self.mask, self.candidates, self.candidate_depth, self.count, self.farthest,
            self.limit, self.nearest,
            self.overflow, self.n_slots, self.tile_pairs, self.slot_pairs,
        )  # fmt: skip
        self.num_pairs, self.truncated = int(stats[0]), int(stats[1])
        self.buffer("pairs", self.num_pairs + 1, ti.types.vector(4, real))  # + a spare
        return self.num_pairs
