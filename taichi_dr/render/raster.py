"""Primitive assembly, near-plane clipping and rasterization (visibility; never under AD).

Input: clip-space vertices (B·V,) vec4 of B views, faces (F,) ivec3 and each view's face
range (see ``arrays``). Output per pixel (B·H·W,), row 0 at the top of each view:
``triangle_id`` (int32, −1 for background) and a packed z-buffer key. Work items are
(view, face) pairs.

How it works, in five passes, so cost grows with pixels + covered tiles (never
pixels × triangles) and memory is O(pixels + triangles):

1. *setup* (per face): clip against the near plane (z + w ≥ 0) in float64 — a crossing
   triangle becomes a triangle or a quad, never dropped; the intersection on an edge is
   computed from its endpoints in vertex-index order, so neighbours get bit-identical
   vertices. Vertices are projected and snapped to 1/256 pixel (int32), the polygon is
   oriented (area > 0; back faces optionally culled), its pixel bounding box and its
   screen-space depth plane are stored, and the 8×8 tiles it touches are counted.
2. *allocate*: each face's range of the work list — a serial prefix sum on the CPU, one
   atomic add per face in setup on GPUs (where a serial loop would run on one thread;
   the order of work items does not change the result: see 4.).
3. *bin*: each face writes one work item (face, tile) per covered tile.
4. *raster* (per work item): exact integer edge functions with the top-left rule at pixel
   centres (set up per face, stepped incrementally along each row); fragments inside
   the depth range do an atomic min on the key ``(depth bits << 32) | face`` (after a
   plain load shows it can win) — the nearest fragment wins, ties go to the lower id,
   so the result is deterministic whatever the thread order.
5. *resolve* (per pixel): key → triangle id.

Depth peeling: a per-pixel floor key makes a pass keep only fragments behind it.
"""

import numpy as np
import taichi as ti

from .. import backend
from . import arrays
from .arrays import Frame, Int, IVec2, IVec3, Vec3, Vec4

SUBPIXEL = 256  # snapping grid: 1/256 pixel
BIN_TILE = 8  # edge of the binning tiles in pixels: a speed trade-off, any size works
COORD_LIMIT = 1 << 29  # |snapped coordinate| bound, keeps edge functions inside int64
EMPTY_KEY = np.iinfo(np.int64).max


@ti.func
def _snap(p: ti.template(), width: ti.i32, height: ti.i32):
    """Homogeneous clip point (f64) → snapped window coordinates (x right, y down), int32."""
    inv_w = 1.0 / p[3]
    sx = (p[0] * inv_w * 0.5 + 0.5) * width * SUBPIXEL
    sy = (0.5 - p[1] * inv_w * 0.5) * height * SUBPIXEL
    sx = ti.min(ti.max(ti.floor(sx + 0.5), -COORD_LIMIT), COORD_LIMIT)
    sy = ti.min(ti.max(ti.floor(sy + 0.5), -COORD_LIMIT), COORD_LIMIT)
    return ti.Vector([ti.cast(sx, ti.i32), ti.cast(sy, ti.i32)])


@ti.func
def _near_hit(p: ti.template(), q: ti.template(), ip: ti.i32, iq: ti.i32):
    """Point where edge p-q crosses the near plane z + w = 0, computed in a fixed
    (vertex-index) order so both triangles sharing the edge get the same bits."""
    a, b = p, q
    if ip > iq:
        a, b = q, p
    da = a[2] + a[3]
    db = b[2] + b[3]
    return a + (b - a) * (da / (da - db))


@ti.func
def _edge(a: ti.template(), b: ti.template()):
    """Edge function of a→b as ``e(p) = A·px + B·py + C`` at subpixel point p, biased by
    the top-left rule so that a centre exactly on an edge belongs to one side only:
    e ≥ 0 means inside. Returns ((A, B) int32, C int64)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    owns = dy < 0 or (dy == 0 and dx > 0)  # left edge, or horizontal top edge
    c = ti.cast(dy, ti.i64) * a[0] - ti.cast(dx, ti.i64) * a[1] - ti.select(owns, 0, 1)
    return ti.Vector([-dy, dx]), c


I64 = ti.types.ndarray(dtype=ti.i64, ndim=1)
IVec4 = ti.types.ndarray(dtype=ti.math.ivec4, ndim=1)


@ti.func
def _item(k: ti.i32, n_faces: ti.i32, ranges: ti.template()):
    """(view, face, active) of item k = b·F + f: active when f is in view b's range."""
    b = k // n_faces
    f = k - b * n_faces
    r = ranges[b]
    return b, f, r[0] <= f and f < r[0] + r[1]


@ti.kernel
def _setup_items(
    clip: Vec4,
    faces: IVec3,
    ranges: IVec2,
    n_views: ti.i32,
    n_vertices: ti.i32,
    n_faces: ti.i32,
    height: ti.i32,
    width: ti.i32,
    cull: ti.i32,
    edge_ab: IVec2,
    edge_c: I64,
    zplane: Vec3,
    bbox: IVec4,
    tile_count: Int,
    tile_offset: Int,
    total: Int,
    atomic: ti.template(),
):
    W, H = width, height
    for k in range(n_views * n_faces):
        b, f, active = _item(k, n_faces, ranges)
        n = 0
        idx = faces[f]
        base = b * n_vertices
        v0 = ti.cast(clip[base + idx[0]], ti.f64)
        v1 = ti.cast(clip[base + idx[1]], ti.f64)
        v2 = ti.cast(clip[base + idx[2]], ti.f64)
        p0 = p1 = p2 = p3 = v0
        if active:
            d0, d1, d2 = v0[2] + v0[3], v1[2] + v1[3], v2[2] + v2[3]
            inside = ti.cast(d0 >= 0, ti.i32) + ti.cast(d1 >= 0, ti.i32) + ti.cast(d2 >= 0, ti.i32)
            if inside == 3:
                n, p0, p1, p2 = 3, v0, v1, v2
            elif inside > 0:
                # rotate so the lone vertex (the only inside one, or the only outside one)
                # comes first; winding is preserved
                lone_in = inside == 1
                j = 0
                if (d1 >= 0) == lone_in:
                    j = 1
                if (d2 >= 0) == lone_in:
                    j = 2
                a, bb, c = v0, v1, v2
                ia, ib, ic = idx[0], idx[1], idx[2]
                if j == 1:
                    a, bb, c, ia, ib, ic = v1, v2, v0, idx[1], idx[2], idx[0]
                elif j == 2:
                    a, bb, c, ia, ib, ic = v2, v0, v1, idx[2], idx[0], idx[1]
                ab = _near_hit(a, bb, ia, ib)
                ca = _near_hit(c, a, ic, ia)
                if lone_in:
                    n, p0, p1, p2 = 3, a, ab, ca
                else:
                    n, p0, p1, p2, p3 = 4, ab, bb, c, ca
        area = ti.i64(0)
        s0 = s1 = s2 = s3 = ti.Vector([0, 0])
        if n > 0:
            s0, s1, s2 = _snap(p0, W, H), _snap(p1, W, H), _snap(p2, W, H)
            s3 = s2
            if n == 4:
                s3 = _snap(p3, W, H)
            # shoelace (twice the signed area); for triangles s3 == s2 adds nothing
            area = (
                ti.cast(s0[0], ti.i64) * s1[1]
                - ti.cast(s1[0], ti.i64) * s0[1]
                + ti.cast(s1[0], ti.i64) * s2[1]
                - ti.cast(s2[0], ti.i64) * s1[1]
                + ti.cast(s2[0], ti.i64) * s3[1]
                - ti.cast(s3[0], ti.i64) * s2[1]
                + ti.cast(s3[0], ti.i64) * s0[1]
                - ti.cast(s0[0], ti.i64) * s3[1]
            )
            # y points down: counter-clockwise in NDC (front) has area < 0
            if area == 0 or (cull == 1 and area > 0) or (cull == -1 and area < 0):
                n = 0
        count = 0
        if n > 0:
            if area < 0:  # orient so that area > 0: reverse the polygon
                if n == 3:
                    s1, s2 = s2, s1
                else:
                    s1, s3 = s3, s1
            # a triangle's fourth edge is e ≡ 0 (always inside)
            edge_ab[4 * k], edge_c[4 * k] = _edge(s0, s1)
            edge_ab[4 * k + 1], edge_c[4 * k + 1] = _edge(s1, s2)
            edge_ab[4 * k + 2], edge_c[4 * k + 2] = _edge(s2, s3 if n == 4 else s0)
            edge_ab[4 * k + 3], edge_c[4 * k + 3] = ti.Vector([0, 0]), ti.i64(0)
            if n == 4:
                edge_ab[4 * k + 3], edge_c[4 * k + 3] = _edge(s3, s0)
            # depth plane from the (unsnapped) first three polygon vertices, in pixels
            q0 = ti.Vector([(p0[0] / p0[3] * 0.5 + 0.5) * W, (0.5 - p0[1] / p0[3] * 0.5) * H])
            q1 = ti.Vector([(p1[0] / p1[3] * 0.5 + 0.5) * W, (0.5 - p1[1] / p1[3] * 0.5) * H])
            q2 = ti.Vector([(p2[0] / p2[3] * 0.5 + 0.5) * W, (0.5 - p2[1] / p2[3] * 0.5) * H])
            z0, z1, z2 = p0[2] / p0[3], p1[2] / p1[3], p2[2] / p2[3]
            e1, e2 = q1 - q0, q2 - q0
            det = e1[0] * e2[1] - e1[1] * e2[0]
            zx = zy = ti.f64(0.0)
            if det != 0:
                zx = ((z1 - z0) * e2[1] - (z2 - z0) * e1[1]) / det
                zy = ((z2 - z0) * e1[0] - (z1 - z0) * e2[0]) / det
            zplane[k] = ti.cast(ti.Vector([z0 - zx * q0[0] - zy * q0[1], zx, zy]), float)
            lo = ti.min(ti.min(s0, s1), ti.min(s2, s3))
            hi = ti.max(ti.max(s0, s1), ti.max(s2, s3))
            # pixels whose centre 256·x + 128 lies in [lo, hi]
            x0 = ti.max((lo[0] - SUBPIXEL // 2 + SUBPIXEL - 1) // SUBPIXEL, 0)
            y0 = ti.max((lo[1] - SUBPIXEL // 2 + SUBPIXEL - 1) // SUBPIXEL, 0)
            x1 = ti.min((hi[0] - SUBPIXEL // 2) // SUBPIXEL, W - 1)
            y1 = ti.min((hi[1] - SUBPIXEL // 2) // SUBPIXEL, H - 1)
            bbox[k] = ti.Vector([x0, y0, x1, y1])
            if x0 <= x1 and y0 <= y1:
                tiles_x = x1 // BIN_TILE - x0 // BIN_TILE + 1
                count = tiles_x * (y1 // BIN_TILE - y0 // BIN_TILE + 1)
        tile_count[k] = count
        if ti.static(atomic):
            if count > 0:
                tile_offset[k] = ti.atomic_add(total[0], count)


@ti.kernel
def _scan_items(n_items: ti.i32, tile_count: Int, tile_offset: Int, total: Int) -> ti.i32:
    ti.loop_config(serialize=True)
    for k in range(n_items):
        tile_offset[k] = total[0]
        total[0] += tile_count[k]
    return total[0]


@ti.kernel
def _bin_items(
    n_items: ti.i32, tiles_x: ti.i32, bbox: IVec4, tile_count: Int, tile_offset: Int, work: IVec2
):
    for k in range(n_items):
        if tile_count[k] > 0:
            b = bbox[k]
            j = tile_offset[k]
            for ty in range(b[1] // BIN_TILE, b[3] // BIN_TILE + 1):
                for tx in range(b[0] // BIN_TILE, b[2] // BIN_TILE + 1):
                    work[j] = ti.Vector([k, ty * tiles_x + tx])
                    j += 1


@ti.kernel
def _raster_items(
    n_work: ti.i32,
    n_faces: ti.i32,
    height: ti.i32,
    width: ti.i32,
    tiles_x: ti.i32,
    work: IVec2,
    edge_ab: IVec2,
    edge_c: I64,
    zplane: Vec3,
    bbox: IVec4,
    key: I64,
    floor_key: I64,
    fragments: Int,
    count: ti.template(),
    peel: ti.template(),
):
    for w in range(n_work):
        k, tile = work[w][0], work[w][1]
        view = k // n_faces
        f = k - view * n_faces
        b = bbox[k]
        tx, ty = tile % tiles_x, tile // tiles_x
        ab0, ab1, ab2, ab3 = (
            edge_ab[4 * k],
            edge_ab[4 * k + 1],
            edge_ab[4 * k + 2],
            edge_ab[4 * k + 3],
        )
        c0, c1, c2, c3 = edge_c[4 * k], edge_c[4 * k + 1], edge_c[4 * k + 2], edge_c[4 * k + 3]
        zp = zplane[k]
        xa = ti.max(b[0], tx * BIN_TILE)
        px = ti.i64(xa) * SUBPIXEL + SUBPIXEL // 2
        for y in range(ti.max(b[1], ty * BIN_TILE), ti.min(b[3], ty * BIN_TILE + BIN_TILE - 1) + 1):
            py = ti.i64(y) * SUBPIXEL + SUBPIXEL // 2
            e0 = ab0[0] * px + ab0[1] * py + c0
            e1 = ab1[0] * px + ab1[1] * py + c1
            e2 = ab2[0] * px + ab2[1] * py + c2
            e3 = ab3[0] * px + ab3[1] * py + c3
            row = (view * height + y) * width
            for x in range(xa, ti.min(b[2], tx * BIN_TILE + BIN_TILE - 1) + 1):
                if e0 >= 0 and e1 >= 0 and e2 >= 0 and e3 >= 0:
                    z = zp[0] + zp[1] * (x + 0.5) + zp[2] * (y + 0.5)
                    if z <= 1.0:
                        d = ti.cast(ti.min(ti.max(z * 0.5 + 0.5, 0.0), 1.0), ti.f32)
                        kk = (ti.cast(ti.bit_cast(d, ti.i32), ti.i64) << 32) | f
                        i = row + x
                        behind = True  # the previous layer (depth peeling only)
                        if ti.static(peel == 1):
                            behind = kk > floor_key[i]
                        elif ti.static(peel == 2):  # strictly deeper: equal depths are culled
                            behind = (kk >> 32) > (floor_key[i] >> 32)
                        if behind:
                            if ti.static(count):
                                fragments[i] += 1
                            # plain load first: most occluded fragments skip the atomic
                            if kk < key[i]:
                                ti.atomic_min(key[i], kk)
                e0 += ti.i64(ab0[0]) * SUBPIXEL
                e1 += ti.i64(ab1[0]) * SUBPIXEL
                e2 += ti.i64(ab2[0]) * SUBPIXEL
                e3 += ti.i64(ab3[0]) * SUBPIXEL


@ti.kernel
def _clear_keys(
    key: I64, floor_key: I64, fragments: Int, total: Int, peel: ti.template(), count: ti.template()
):
    for i in range(key.shape[0]):
        if i == 0:
            total[0] = 0  # the work-list count, here to save a launch
        if ti.static(peel):
            floor_key[i] = key[i]
        key[i] = ti.i64(EMPTY_KEY)
        if ti.static(count):
            fragments[i] = 0


@ti.kernel
def _resolve_keys(key: I64, triangle_id: Int):
    for i in range(key.shape[0]):
        k = key[i]
        triangle_id[i] = -1 if k == ti.i64(EMPTY_KEY) else ti.cast(k & ti.i64(0xFFFFFFFF), ti.i32)


class Rasterizer:
    """Visibility for a batch of views (compile-once array kernels; see ``arrays``).

    Owns, for the last frame it rasterized, ``triangle_id`` (B·H·W,) int32 (−1: empty),
    the packed z-buffer ``key`` (B·H·W,) int64 and ``fragments`` (B·H·W,) int32 (every
    fragment that passed the coverage test, with ``count=True``: tests use it to prove no
    cracks and no double coverage). Buffers grow with the frame and the mesh; nothing
    is compiled again. ``serial_scan``: the work list is allocated by a serial prefix sum
    (None: on the CPU) or by one atomic add per face (GPUs, where a serial loop would run
    on one thread; the order of work items does not change the result).
    """

    def __init__(self, serial_scan: bool | None = None):
        backend.ensure_init()
        self.serial_scan = backend.current_arch() == "cpu" if serial_scan is None else serial_scan
        self.frame = None
        self._pixels = None  # (triangle_id, key, floor_key, fragments)
        self._items = None  # per (view, face) records, by capacity
        self._item_capacity = 0
        self._work = None
        self._work_capacity = 0
        self.total = arrays.empty(1, dtype=ti.i32)

    @property
    def triangle_id(self):
        return self._pixels[0]

    @property
    def key(self):
        return self._pixels[1]

    @property
    def fragments(self):
        return self._pixels[3]

    def _ensure(self, frame: Frame, n_items: int) -> None:
        if self.frame != frame:
            n = frame.pixels
            self._pixels = (
                arrays.empty(n, dtype=ti.i32),
                arrays.empty(n, dtype=ti.i64),
                arrays.empty(n, dtype=ti.i64),
                arrays.empty(n, dtype=ti.i32),
            )
            self.frame = frame
        if n_items > self._item_capacity:
            c = _capacity(n_items)
            self._items = (
                arrays.empty(4 * c, 2, ti.i32),  # edge (A, B) per polygon edge
                arrays.empty(4 * c, dtype=ti.i64),  # edge C
                arrays.empty(c, 3),  # depth plane z_ndc = a + b x + c y
                arrays.empty(c, 4, ti.i32),  # pixel box x0, y0, x1, y1 (inclusive)
                arrays.empty(c, dtype=ti.i32),  # tiles covered
                arrays.empty(c, dtype=ti.i32),  # first work item
            )
            self._item_capacity = c

    def forward(
        self,
        clip,
        faces,
        ranges,
        frame: Frame,
        n_vertices: int,
        cull: str = "none",
        count: bool = False,
        peel: bool | str = False,
        triangle_id=None,
    ) -> None:
        """Rasterize view b's faces ``faces[start:start + count]`` (``ranges`` (B,) ivec2)
        over its clip coordinates ``clip[b·V:(b + 1)·V]`` (V = ``n_vertices``; 0: one
        vertex set shared by the views) into a ``frame`` of B views. ``cull``: "none",
        "back" or "front". ``peel=True`` keeps only fragments behind the previous call's
        result (the next depth-peeling layer; at equal depth, higher face ids are behind);
        ``peel="depth"``: only fragments strictly deeper than it.
        ``triangle_id``: an int32 (B·H·W,) array to write the ids into (default: own)."""
        peel = {False: 0, True: 1, "depth": 2}[peel]
        n_faces = faces.shape[0]
        n_items = frame.views * n_faces
        self._ensure(frame, n_items)
        tri, key, floor_key, fragments = self._pixels
        _clear_keys(key, floor_key, fragments, self.total, peel > 0, bool(count))
        if n_items:
            edge_ab, edge_c, zplane, bbox, tile_count, tile_offset = self._items
            tiles_x = (frame.width + BIN_TILE - 1) // BIN_TILE
            _setup_items(
                clip,
                faces,
                ranges,
                frame.views,
                n_vertices,
                n_faces,
                frame.height,
                frame.width,
                {"none": 0, "back": 1, "front": -1}[cull],
                edge_ab,
                edge_c,
                zplane,
                bbox,
                tile_count,
                tile_offset,
                self.total,
                not self.serial_scan,
            )
            if self.serial_scan:
                total = _scan_items(n_items, tile_count, tile_offset, self.total)
            else:
                total = int(self.total[0])
            if total > self._work_capacity:  # grow, never drop faces
                self._work_capacity = _capacity(total)
                self._work = arrays.empty(self._work_capacity, 2, ti.i32)
            if total:
                _bin_items(n_items, tiles_x, bbox, tile_count, tile_offset, self._work)
                _raster_items(
                    total,
                    n_faces,
                    frame.height,
                    frame.width,
                    tiles_x,
                    self._work,
                    edge_ab,
                    edge_c,
                    zplane,
                    bbox,
                    key,
                    floor_key,
                    fragments,
                    bool(count),
                    peel,
                )
        _resolve_keys(key, tri if triangle_id is None else triangle_id)


def _capacity(n: int) -> int:
    """Buffer length for n items: a power of two, at least 1024 (grown, never shrunk)."""
    return max(1 << max(n - 1, 1).bit_length(), 1024)
