"""Primitive assembly, near-plane clipping and rasterization (visibility; never under AD).

Input: clip-space vertices (B·V,) vec4 of B views, faces (F,) ivec3 and each view's face
range (see ``arrays``). Output per pixel (B·H·W,), row 0 at the top of each view:
``triangle_id`` (int32, −1 for background) and a packed z-buffer key. Work items are
(view, face) pairs.

How it works: one kernel launch per frame (each launch costs ~0.1 ms of Python in
Taichi), its stages top-level loops, so cost grows with pixels + covered pixels (never
pixels × triangles) and memory is O(pixels + triangles):

0. *vertices*: each vertex in front of the near plane (z + w ≥ 0) is projected (float64)
   and snapped to 1/256 pixel (int32) once, for all the faces that share it.
1. *setup* (per face): a face across the near plane is clipped in float64 — it becomes a
   triangle or a quad, never dropped; the intersection on an edge is computed from its
   endpoints in vertex-index order, so neighbours get bit-identical vertices — and its
   new vertices projected and snapped. The polygon is oriented (area > 0; back faces
   optionally culled), its pixel bounding box and screen-space depth plane computed. A
   *small* triangle (box of at most ``SMALL_FACE`` pixels: nearly all of them in a fitted
   mesh) is drawn right there (4.); a larger face stores its edges and gets a range of
   the work list for the 16×16 tiles it touches.
2. *allocate*: one atomic add per large face, or a serial prefix sum (``serial_scan``);
   the order of work items does not change the result (see 4.).
3. *bin*: each large face writes one work item (face, tile) per covered tile.
4. *draw* (per small face, per work item): exact integer edge functions with the
   top-left rule at pixel centres (set up per face, stepped incrementally along each
   row, a row left once its covered span is passed: the covered set is convex); fragments
   inside the depth range do an atomic min on the key ``(depth bits << 32) | face``
   (after a plain load shows it can win) — the nearest fragment wins, ties go to the
   lower id, so the result is deterministic whatever the thread order.
5. *resolve* (per pixel): key → triangle id; the other key buffer (the previous frame's,
   the floor of depth peeling) is cleared for the next frame, so no pass clears keys.

Depth peeling: the previous frame's keys form a per-pixel floor; a pass keeps only
fragments behind it.
"""

import numpy as np
import taichi as ti

from .. import backend
from . import arrays
from .arrays import Frame, Int, IVec2, IVec3, Vec3, Vec4

SUBPIXEL = 256  # snapping grid: 1/256 pixel
BIN_TILE = 16  # edge of the binning tiles in pixels: a speed trade-off, any size works
SMALL_FACE = 1024  # triangles whose pixel box is at most this many pixels are drawn at setup
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
I64Vec3 = ti.types.ndarray(dtype=ti.types.vector(3, ti.i64), ndim=1)
IVec6 = ti.types.ndarray(dtype=ti.types.vector(6, ti.i32), ndim=1)
F64Vec3 = ti.types.ndarray(dtype=ti.types.vector(3, ti.f64), ndim=1)


@ti.func
def _polygon(
    b: ti.i32,
    f: ti.i32,
    clip: ti.template(),
    snapped: ti.template(),
    projected: ti.template(),
    faces: ti.template(),
    ranges: ti.template(),
    n_vertices: ti.i32,
    width: ti.i32,
    height: ti.i32,
    cull: ti.i32,
):
    """Face f of view b clipped, snapped and oriented: (n vertices: 0 (nothing to draw),
    3 or 4; snapped s0..s3 (s3 = s2 for a triangle); projected q0, q1, q2 (f64, before
    orientation: the depth plane's points)). A face in front of the near plane reads its
    vertices' ``snapped`` and ``projected`` records; only a crossing one reads ``clip``."""
    r = ranges[b]
    n = 0
    idx = faces[f]
    base = b * n_vertices
    i0, i1, i2 = base + idx[0], base + idx[1], base + idx[2]
    t0, t1, t2 = snapped[i0], snapped[i1], snapped[i2]
    s0, s1, s2 = ti.Vector([t0[0], t0[1]]), ti.Vector([t1[0], t1[1]]), ti.Vector([t2[0], t2[1]])
    s3 = s2
    q0, q1, q2 = projected[i0], projected[i1], projected[i2]
    inside = t0[2] + t1[2] + t2[2]
    if r[0] <= f and f < r[0] + r[1]:
        if inside == 3:
            n = 3
        elif inside > 0:
            v0 = ti.cast(clip[i0], ti.f64)
            v1 = ti.cast(clip[i1], ti.f64)
            v2 = ti.cast(clip[i2], ti.f64)
            # rotate so the lone vertex (the only inside one, or the only outside one)
            # comes first; winding is preserved
            lone_in = inside == 1
            j = 0
            if (t1[2] == 1) == lone_in:
                j = 1
            if (t2[2] == 1) == lone_in:
                j = 2
            a, bb, c = v0, v1, v2
            ia, ib, ic = idx[0], idx[1], idx[2]
            if j == 1:
                a, bb, c, ia, ib, ic = v1, v2, v0, idx[1], idx[2], idx[0]
            elif j == 2:
                a, bb, c, ia, ib, ic = v2, v0, v1, idx[2], idx[0], idx[1]
            ab = _near_hit(a, bb, ia, ib)
            ca = _near_hit(c, a, ic, ia)
            n, p0, p1, p2, p3 = 3, a, ab, ca, ca  # a triangle: p3 = p2
            if not lone_in:
                n, p0, p1, p2, p3 = 4, ab, bb, c, ca
            s0, s1 = _snap(p0, width, height), _snap(p1, width, height)
            s2, s3 = _snap(p2, width, height), _snap(p3, width, height)
            q0, q1 = _project(p0, width, height), _project(p1, width, height)
            q2 = _project(p2, width, height)
    if n > 0:
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
        elif area < 0:  # orient so that area > 0: reverse the polygon
            if n == 3:
                s1, s2 = s2, s1
            else:
                s1, s3 = s3, s1
    return n, s0, s1, s2, s3, q0, q1, q2


@ti.func
def _edges(n: ti.i32, s0: ti.template(), s1: ti.template(), s2: ti.template(), s3: ti.template()):
    """The polygon's edge functions: A (ivec4), B (ivec4), C (4 × i64); a triangle's
    fourth edge is e ≡ 0 (always inside)."""
    ab0, c0 = _edge(s0, s1)
    ab1, c1 = _edge(s1, s2)
    ab2, c2 = _edge(s2, s3 if n == 4 else s0)
    ab3, c3 = ti.Vector([0, 0]), ti.i64(0)
    if n == 4:
        ab3, c3 = _edge(s3, s0)
    a = ti.Vector([ab0[0], ab1[0], ab2[0], ab3[0]])
    b = ti.Vector([ab0[1], ab1[1], ab2[1], ab3[1]])
    return a, b, ti.Vector([c0, c1, c2, c3])


@ti.func
def _project(p: ti.template(), width: ti.i32, height: ti.i32):
    """Homogeneous clip point (f64) → (x, y) in pixels (unsnapped, y down), z_ndc."""
    W, H = width, height
    return ti.Vector([(p[0] / p[3] * 0.5 + 0.5) * W, (0.5 - p[1] / p[3] * 0.5) * H, p[2] / p[3]])


@ti.func
def _depth_plane(p0: ti.template(), p1: ti.template(), p2: ti.template()):
    """z_ndc = a + b·x + c·y (x, y in pixels) through projected p0, p1, p2."""
    q0, q1, q2 = ti.Vector([p0[0], p0[1]]), ti.Vector([p1[0], p1[1]]), ti.Vector([p2[0], p2[1]])
    z0, z1, z2 = p0[2], p1[2], p2[2]
    e1, e2 = q1 - q0, q2 - q0
    det = e1[0] * e2[1] - e1[1] * e2[0]
    zx = zy = ti.f64(0.0)
    if det != 0:
        zx = ((z1 - z0) * e2[1] - (z2 - z0) * e1[1]) / det
        zy = ((z2 - z0) * e1[0] - (z1 - z0) * e2[0]) / det
    return ti.cast(ti.Vector([z0 - zx * q0[0] - zy * q0[1], zx, zy]), float)


@ti.func
def _pixel_box(
    s0: ti.template(), s1: ti.template(), s2: ti.template(), s3: ti.template(), width, height
):
    """Pixels whose centre 256·x + 128 lies in the polygon's box: (x0, y0, x1, y1),
    inclusive, clipped to the image (empty: x0 > x1 or y0 > y1)."""
    lo = ti.min(ti.min(s0, s1), ti.min(s2, s3))
    hi = ti.max(ti.max(s0, s1), ti.max(s2, s3))
    x0 = ti.max((lo[0] - SUBPIXEL // 2 + SUBPIXEL - 1) // SUBPIXEL, 0)
    y0 = ti.max((lo[1] - SUBPIXEL // 2 + SUBPIXEL - 1) // SUBPIXEL, 0)
    x1 = ti.min((hi[0] - SUBPIXEL // 2) // SUBPIXEL, width - 1)
    y1 = ti.min((hi[1] - SUBPIXEL // 2) // SUBPIXEL, height - 1)
    return ti.Vector([x0, y0, x1, y1])


@ti.func
def _draw(
    box: ti.template(),
    a: ti.template(),
    b: ti.template(),
    c: ti.template(),
    zp: ti.template(),
    f: ti.i32,
    row0: ti.i32,
    width: ti.i32,
    key: ti.template(),
    floor_key: ti.template(),
    fragments: ti.template(),
    count: ti.template(),
    peel: ti.template(),
):
    """Depth-test every covered pixel of ``box`` (x0, y0, x1, y1) of face f of the view
    whose row 0 is image row ``row0``; edge functions e = a·px + b·py + c (subpixels; 3
    or 4 edges: vectors a, b (int32) and c (int64) of that length)."""
    step = ti.cast(a, ti.i64) * SUBPIXEL
    px = ti.i64(box[0]) * SUBPIXEL + SUBPIXEL // 2
    for y in range(box[1], box[3] + 1):
        py = ti.i64(y) * SUBPIXEL + SUBPIXEL // 2
        e = ti.cast(a, ti.i64) * px + ti.cast(b, ti.i64) * py + c
        row = (row0 + y) * width
        zy = zp[2] * (y + 0.5)
        entered = False
        for x in range(box[0], box[2] + 1):
            signs = e[0]
            for j in ti.static(range(1, c.n)):
                signs |= e[j]
            if signs >= 0:  # every edge function ≥ 0
                entered = True
                z = zp[0] + zp[1] * (x + 0.5) + zy
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
            elif entered:  # the covered pixels of a row are contiguous (a convex set)
                break
            e += step


@ti.func
def _bin(k: ti.i32, j: ti.i32, box: ti.template(), tiles_x: ti.i32, work: ti.template()):
    """Work items (k, tile) for the tiles of ``box``, from slot j (those past the end of
    ``work`` are dropped: the caller grows it and draws again)."""
    for ty in range(box[1] // BIN_TILE, box[3] // BIN_TILE + 1):
        for tx in range(box[0] // BIN_TILE, box[2] // BIN_TILE + 1):
            if j < work.shape[0]:
                work[j] = ti.Vector([k, ty * tiles_x + tx])
            j += 1


@ti.kernel
def _rasterize(
    clip: Vec4,
    snapped: IVec3,
    projected: F64Vec3,
    faces: IVec3,
    ranges: IVec2,
    n_views: ti.i32,
    n_vertices: ti.i32,
    height: ti.i32,
    width: ti.i32,
    cull: ti.i32,
    edges: I64Vec3,
    zplane: Vec3,
    boxes: IVec6,
    total: Int,
    work: IVec2,
    key: I64,
    floor_key: I64,
    fragments: Int,
    triangle_id: Int,
    atomic: ti.template(),
    count: ti.template(),
    peel: ti.template(),
) -> ti.i32:
    """One frame: the stages of the module docstring. Returns the number of work items
    it needed; more than ``work`` holds: nothing was resolved, call again with a longer
    list (the keys drawn so far stay valid: drawing is a minimum)."""
    W, H = width, height
    n_faces = faces.shape[0]
    tiles_x = (W + BIN_TILE - 1) // BIN_TILE
    total[0] = 0
    if ti.static(count):
        for i in range(key.shape[0]):
            fragments[i] = 0
    for v in range(clip.shape[0]):  # 0. vertices in front of the near plane, projected once
        p = ti.cast(clip[v], ti.f64)
        front = ti.cast(p[2] + p[3] >= 0, ti.i32)
        s = ti.Vector([0, 0])
        if front:
            s = _snap(p, W, H)
            projected[v] = _project(p, W, H)
        snapped[v] = ti.Vector([s[0], s[1], front])
    for k in range(n_views * n_faces):  # 1. setup; small faces drawn, large ones binned
        view = 0
        if n_views > 1:  # an integer division costs ~5 ns a face
            view = k // n_faces
        f = k - view * n_faces
        n, s0, s1, s2, s3, q0, q1, q2 = _polygon(
            view, f, clip, snapped, projected, faces, ranges, n_vertices, W, H, cull
        )
        n_tiles = 0
        if n > 0:
            box = _pixel_box(s0, s1, s2, s3, W, H)
            w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
            if w > 0 and h > 0:
                a, b, c = _edges(n, s0, s1, s2, s3)
                zp = _depth_plane(q0, q1, q2)
                if n == 3 and w * h <= SMALL_FACE:  # a triangle: its fourth edge is e ≡ 0
                    a3, b3 = ti.Vector([a[0], a[1], a[2]]), ti.Vector([b[0], b[1], b[2]])
                    c3 = ti.Vector([c[0], c[1], c[2]])
                    _draw(
                        box, a3, b3, c3, zp, f, view * H, W, key, floor_key, fragments, count, peel
                    )
                else:
                    for j in ti.static(range(4)):
                        edges[4 * k + j] = ti.Vector([a[j], b[j], c[j]], ti.i64)
                    zplane[k] = zp
                    for j in ti.static(range(4)):
                        boxes[k][j] = box[j]
                    n_tiles = (box[2] // BIN_TILE - box[0] // BIN_TILE + 1) * (
                        box[3] // BIN_TILE - box[1] // BIN_TILE + 1
                    )
                    if ti.static(atomic):  # 2., 3.
                        _bin(k, ti.atomic_add(total[0], n_tiles), box, tiles_x, work)
        if ti.static(not atomic):
            boxes[k][4] = n_tiles
    if ti.static(not atomic):
        ti.loop_config(serialize=True)
        for k in range(n_views * n_faces):  # 2. serial prefix sum
            boxes[k][5] = total[0]
            total[0] += boxes[k][4]
        for k in range(n_views * n_faces):  # 3.
            if boxes[k][4] > 0:
                box = boxes[k]
                _bin(k, box[5], box, tiles_x, work)
    n_work = total[0]
    n_pixels = key.shape[0]
    if n_work > work.shape[0]:  # work list too short: the caller grows it and calls again
        n_work, n_pixels = 0, 0
    for u in range(n_work):  # 4. large faces, per tile
        k, tile = work[u][0], work[u][1]
        view = k // n_faces
        f = k - view * n_faces
        tx, ty = tile % tiles_x, tile // tiles_x
        face_box = boxes[k]
        box = ti.Vector(
            [
                ti.max(face_box[0], tx * BIN_TILE),
                ti.max(face_box[1], ty * BIN_TILE),
                ti.min(face_box[2], tx * BIN_TILE + BIN_TILE - 1),
                ti.min(face_box[3], ty * BIN_TILE + BIN_TILE - 1),
            ]
        )
        e0, e1, e2, e3 = edges[4 * k], edges[4 * k + 1], edges[4 * k + 2], edges[4 * k + 3]
        a = ti.Vector([e0[0], e1[0], e2[0], e3[0]])
        b = ti.Vector([e0[1], e1[1], e2[1], e3[1]])
        c = ti.Vector([e0[2], e1[2], e2[2], e3[2]])
        _draw(box, a, b, c, zplane[k], f, view * H, W, key, floor_key, fragments, count, peel)
    for i in range(n_pixels):  # 5. resolve; the floor becomes the next frame's empty key
        kk = key[i]
        triangle_id[i] = -1 if kk == ti.i64(EMPTY_KEY) else ti.cast(kk & ti.i64(0xFFFFFFFF), ti.i32)
        floor_key[i] = ti.i64(EMPTY_KEY)
    return total[0]


class Rasterizer:
    """Visibility for a batch of views (compile-once array kernels; see ``arrays``).

    Owns, for the last frame it rasterized, ``triangle_id`` (B·H·W,) int32 (−1: empty),
    the packed z-buffer ``key`` (B·H·W,) int64 and ``fragments`` (B·H·W,) int32 (every
    fragment that passed the coverage test, with ``count=True``: tests use it to prove no
    cracks and no double coverage). Buffers grow with the frame and the mesh; nothing
    is compiled again. The work list is allocated by one atomic add per large face (few:
    they hardly contend), or with ``serial_scan=True`` by a serial prefix sum (an order
    independent of thread timing); the order of work items does not change the result.
    """

    def __init__(self, serial_scan: bool | None = None):
        backend.ensure_init()
        self.serial_scan = bool(serial_scan)
        self.frame = None
        self._pixels = None  # (triangle_id, key, next key, fragments)
        self._vertices = None  # per vertex: snapped (ivec3), projected (f64 vec3)
        self._vertex_capacity = 0
        self._items = None  # per (view, face) records of large faces, by capacity
        self._item_capacity = 0
        self._work = arrays.empty(1024, 2, ti.i32)
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

    def _ensure(self, frame: Frame, n_vertices: int, n_items: int) -> None:
        if self.frame != frame:
            n = frame.pixels
            empty = arrays.from_numpy(np.full(n, EMPTY_KEY), dtype=ti.i64)  # next frame's key
            self._pixels = (
                arrays.empty(n, dtype=ti.i32),
                arrays.empty(n, dtype=ti.i64),  # zeros: a first peeling pass keeps all
                empty,
                arrays.empty(n, dtype=ti.i32),
            )
            self.frame = frame
        if self._items is None or n_items > self._item_capacity:
            c = _capacity(n_items)
            self._items = (
                arrays.empty(4 * c, 3, ti.i64),  # edge functions (A, B, C) per polygon edge
                arrays.empty(c, 3),  # depth plane z_ndc = a + b x + c y
                # pixel box x0, y0, x1, y1 (inclusive), tiles covered, first work item
                arrays.empty(c, 6, ti.i32),
            )
            self._item_capacity = c
        if self._vertices is None or n_vertices > self._vertex_capacity:
            c = _capacity(n_vertices)
            self._vertices = (arrays.empty(c, 3, ti.i32), arrays.empty(c, 3, ti.f64))
            self._vertex_capacity = c

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
        self._ensure(frame, clip.shape[0], frame.views * n_faces)
        tri, last_key, key, fragments = self._pixels
        while True:
            total = _rasterize(
                clip,
                *self._vertices,
                faces,
                ranges,
                frame.views,
                n_vertices,
                frame.height,
                frame.width,
                {"none": 0, "back": 1, "front": -1}[cull],
                *self._items,
                self.total,
                self._work,
                key,
                last_key,
                fragments,
                tri if triangle_id is None else triangle_id,
                not self.serial_scan,
                bool(count),
                peel,
            )
            if total <= self._work.shape[0]:
                break
            # grow, never drop faces; drawing again gives the same keys (a minimum)
            self._work = arrays.empty(_capacity(total), 2, ti.i32)
        self._pixels = (tri, key, last_key, fragments)


def _capacity(n: int) -> int:
    """Buffer length for n items: a power of two, at least 1024 (grown, never shrunk)."""
    return max(1 << max(n - 1, 1).bit_length(), 1024)
