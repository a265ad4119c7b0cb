"""Silhouette edges between neighbouring pixels, shared by ``antialias`` and ``nmr``.

For every horizontally or vertically adjacent pixel pair (P, Q) with different triangle
ids, the *front* triangle T is the one nearer the camera (or the only one). If an edge
of T that is a silhouette — a mesh boundary, or an edge whose neighbour faces the other
way in screen space — crosses the segment between the two pixel centres, the pair
straddles a visibility discontinuity. ``alpha`` ∈ [0, 1] is where the edge crosses, as a
fraction of the way from T's pixel P to the other pixel Q; it is a differentiable
function of the edge's clip-space vertices, which is how visibility gradients reach
vertex positions.

Topology (the neighbour across each edge) is computed once per mesh on *welded*
positions, so UV seams and other duplicated vertices are not mistaken for silhouettes.
"""

import numpy as np
import taichi as ti

from ..errors import UserError
from ..scene import distinct_faces
from . import arrays
from .arrays import Int, IVec2, IVec3, Vec4, channels, check_length


def edge_neighbours(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) int32: the face across edge k = (v_k, v_{k+1}) of each face, −1 if the edge
    is a boundary or non-manifold. Vertices at identical positions count as one. Among the
    :func:`~taichi_dr.scene.distinct_faces` only: a duplicate face gets its first copy's
    row, a degenerate face −1s, and no face has them as a neighbour."""
    positions, weld = np.unique(np.asarray(vertices), axis=0, return_inverse=True)
    welded = weld.reshape(-1)[np.asarray(faces)]
    keep = distinct_faces(positions, welded)
    out = np.full((len(welded), 3), -1, dtype=np.int32)
    inner = _neighbours(welded[keep])
    out[keep] = np.where(inner >= 0, keep[np.maximum(inner, 0)], -1)
    _, first, same = np.unique(
        np.sort(welded, axis=1), axis=0, return_index=True, return_inverse=True
    )
    first = first[same.reshape(-1)]  # each face's first face with the same three vertices
    copy = np.nonzero(np.isin(first, keep) & (first != np.arange(len(welded))))[0]
    orig = first[copy]
    for k in range(3):  # a copy's edge k is some edge j of its first face, in any order
        a, b = welded[copy, k], welded[copy, (k + 1) % 3]
        for j in range(3):
            pa, pb = welded[orig, j], welded[orig, (j + 1) % 3]
            hit = ((a == pa) & (b == pb)) | ((a == pb) & (b == pa))
            out[copy[hit], k] = out[orig[hit], j]
    return out


def _neighbours(f: np.ndarray) -> np.ndarray:
    """:func:`edge_neighbours` of faces ``f`` (F, 3) that are all distinct."""
    F = len(f)
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    key = np.minimum(a, b).astype(np.int64) * (f.max() + 1) + np.maximum(a, b)
    owner = np.tile(np.arange(F), 3)
    slot = np.repeat(np.arange(3), F)
    order = np.argsort(key, kind="stable")
    key, owner, slot = key[order], owner[order], slot[order]
    out = np.full((F, 3), -1, dtype=np.int32)
    start = np.r_[0, np.nonzero(np.diff(key))[0] + 1]
    count = np.diff(np.r_[start, len(key)])
    pairs = start[count == 2]
    out[owner[pairs], slot[pairs]] = owner[pairs + 1]
    out[owner[pairs + 1], slot[pairs + 1]] = owner[pairs]
    return out


@ti.func
def to_pixels(c, width: ti.i32, height: ti.i32):
    """Clip point → window pixel coordinates (x right, y down; centres at +0.5)."""
    return ti.Vector([(c[0] / c[3] * 0.5 + 0.5) * width, (0.5 - c[1] / c[3] * 0.5) * height])


@ti.func
def facing(c0, c1, c2):
    """Sign of the screen-space area of a clip triangle (homogeneous 2D determinant)."""
    return (
        (
            c0[0] * (c1[1] * c2[3] - c2[1] * c1[3])
            - c1[0] * (c0[1] * c2[3] - c2[1] * c0[3])
            + c2[0] * (c0[1] * c1[3] - c1[1] * c0[3])
        )
        * c0[3]
        * c1[3]
        * c2[3]
    )


@ti.func
def crossing(
    c0, c1, y: ti.i32, x: ti.i32, d: ti.template(), front: ti.i32, width: ti.i32, height: ti.i32
):
    """Where the screen edge c0–c1 crosses the segment between the centres of pixel
    (y, x) and its neighbour (y + d, x + 1 − d): the fraction of the way from the front
    triangle's pixel (``front`` = 1: (y, x)) to the other one. Finite for any input."""
    p0 = to_pixels(c0, width, height)
    p1 = to_pixels(c1, width, height)
    axis = ti.static(d)  # pixel coordinate (x = 0, y = 1) that varies along the pair
    other = ti.static(1 - d)
    line = ti.Vector([x + 0.5, y + 0.5])[other]
    den = p1[other] - p0[other]
    den = ti.select(ti.abs(den) > 1e-12, den, 1e-12)
    s = (line - p0[other]) / den
    cross = p0[axis] + s * (p1[axis] - p0[axis])
    start = ti.Vector([x + 0.5, y + 0.5])[axis]
    a = cross - start  # from (y, x) towards the neighbour, in pixels
    return ti.select(front == 1, a, 1.0 - a)


# Per (view b, face f), at b·F + f, ``bits`` holds: bit k (k < 3) set when edge k is a
# silhouette in that view; FRONT or BACK: the sign of the face's screen area (neither: 0).
SILHOUETTE, FRONT, BACK = 0b111, 0b1000, 0b10000


@ti.func
def crossing_grad(c0, c1, y: ti.i32, x: ti.i32, d: ti.template(), front: ti.i32, width, height):
    """∂/∂c0 and ∂/∂c1 (clip vec4s) of :func:`crossing` (same arguments); hand-written
    for adjoints that take gradient arrays explicitly (NMR)."""
    p0 = to_pixels(c0, width, height)
    p1 = to_pixels(c1, width, height)
    axis = ti.static(d)
    other = ti.static(1 - d)
    line = ti.Vector([x + 0.5, y + 0.5])[other]
    raw = p1[other] - p0[other]
    clamped = ti.abs(raw) <= 1e-12
    den = ti.select(clamped, 1e-12, raw)
    s = (line - p0[other]) / den
    sign = ti.select(front == 1, 1.0, -1.0)
    run = p1[axis] - p0[axis]
    g0 = ti.Vector([0.0, 0.0])  # ∂alpha/∂p0, ∂alpha/∂p1 (pixel coordinates)
    g1 = ti.Vector([0.0, 0.0])
    g0[axis] = sign * (1.0 - s)
    g1[axis] = sign * s
    g0[other] = sign * run * ti.select(clamped, -1.0 / den, (s - 1.0) / den)
    g1[other] = sign * run * ti.select(clamped, 0.0, -s / den)
    return _to_pixels_grad(c0, g0, width, height), _to_pixels_grad(c1, g1, width, height)


@ti.func
def _to_pixels_grad(c, g, width, height):
    """The clip-space gradient of a scalar whose gradient w.r.t. ``to_pixels(c)`` is g."""
    gx = g[0] * 0.5 * width / c[3]
    gy = -g[1] * 0.5 * height / c[3]
    return ti.Vector([gx, gy, 0.0, -(gx * c[0] + gy * c[1]) / c[3]])


@ti.kernel
def _facing_bits(clip: Vec4, faces: IVec3, ranges: IVec2, n_vertices: ti.i32, bits: Int):
    n_faces = faces.shape[0]
    for f in range(n_faces):
        for b in range(ranges.shape[0]):
            code = 0
            if ranges[b][0] <= f and f < ranges[b][0] + ranges[b][1]:
                v = faces[f] + b * n_vertices
                c0 = ti.cast(clip[v[0]], ti.f64)
                area = facing(c0, ti.cast(clip[v[1]], ti.f64), ti.cast(clip[v[2]], ti.f64))
                code = ti.select(area > 0.0, FRONT, ti.select(area < 0.0, BACK, 0))
            bits[b * n_faces + f] = code


@ti.kernel
def _silhouette_bits(neighbours: IVec3, ranges: IVec2, bits: Int):
    n_faces = neighbours.shape[0]
    for f in range(n_faces):
        for b in range(ranges.shape[0]):
            if ranges[b][0] <= f and f < ranges[b][0] + ranges[b][1]:
                k = b * n_faces + f
                sign = bits[k] & (FRONT | BACK)
                sil = 0
                for e in ti.static(range(3)):
                    n = neighbours[f][e]
                    # a silhouette unless the neighbour faces the same way (areas of one sign)
                    if n < 0 or bits[b * n_faces + n] & sign == 0:
                        sil |= 1 << e
                ti.atomic_or(bits[k], sil)  # neighbours read only FRONT | BACK of this entry


RULES = ("taichi_dr", "nvdiffrast")
# nvdiffrast's rules test a front face's own edges only: for at most this many (view, face)
# items the silhouette bits are computed where needed, saving two kernel launches per call;
# above it, once per face (cheaper than per pixel pair for dense meshes)
ON_THE_FLY = 4096
TOLERANCE = 1.0 / 16.0  # nvdiffrast's rules: crossings this far past a centre still count


@ti.func
def _face_edge(
    code: ti.i32,
    v,
    y: ti.i32,
    x: ti.i32,
    d: ti.template(),
    front: ti.i32,
    clip: ti.template(),
    height: ti.i32,
    width: ti.i32,
    nv: ti.template(),
):
    """A silhouette edge (i0, i1) of the face with clip indices ``v`` and silhouette bits
    ``code`` crossing the segment of pair (y, x, d) between 0 and 1, or (−1, −1).
    ``nv`` (nvdiffrast's rules): the edge must also run at least as much across the pair
    as along it, and may cross up to ``TOLERANCE`` beyond either centre."""
    out = ti.Vector([-1, -1])
    slack = ti.static(TOLERANCE if nv else 0.0)
    for k in ti.static(range(3)):
        i0, i1 = v[k], v[(k + 1) % 3]
        if out[0] < 0 and (code >> k) & 1 == 1 and clip[i0][3] > 0.0 and clip[i1][3] > 0.0:
            p0 = to_pixels(clip[i0], width, height)
            p1 = to_pixels(clip[i1], width, height)
            line = ti.Vector([x + 0.5, y + 0.5])[1 - d]
            steep = True
            if ti.static(nv):
                steep = ti.abs(p1[1 - d] - p0[1 - d]) >= ti.abs(p1[d] - p0[d])
            if steep and (p0[1 - d] - line) * (p1[1 - d] - line) <= 0.0 and p0[1 - d] != p1[1 - d]:
                a = crossing(clip[i0], clip[i1], y, x, d, front, width, height)
                if -slack <= a and a <= 1.0 + slack:
                    out = ti.Vector([i0, i1])
    return out


@ti.func
def _own_silhouettes(t: ti.i32, base: ti.i32, faces: ti.template(), neighbours: ti.template(),
                     clip: ti.template()):  # fmt: skip
    """Silhouette bits of face t computed on the spot (nvdiffrast's rules, every face
    present): edge k is a silhouette unless its neighbour faces the same way on screen."""
    v = faces[t] + base
    area = facing(
        ti.cast(clip[v[0]], ti.f64), ti.cast(clip[v[1]], ti.f64), ti.cast(clip[v[2]], ti.f64)
    )
    code = 0
    for k in ti.static(range(3)):
        n = neighbours[t][k]
        same = False
        if n >= 0:
            u = faces[n] + base
            c0, c1, c2 = (
                ti.cast(clip[u[0]], ti.f64),
                ti.cast(clip[u[1]], ti.f64),
                ti.cast(clip[u[2]], ti.f64),
            )
            other = facing(c0, c1, c2)
            same = (area > 0.0 and other > 0.0) or (area < 0.0 and other < 0.0)
        if not same:
            code |= 1 << k
    return code


@ti.kernel
def _detect(
    tri: Int,
    depth: ti.types.ndarray(ndim=1),
    clip: Vec4,
    faces: IVec3,
    neighbours: IVec3,
    bits: Int,
    height: ti.i32,
    width: ti.i32,
    n_vertices: ti.i32,
    edges: IVec3,
    nv: ti.template(),
    on_the_fly: ti.template(),
):
    n, n_faces = tri.shape[0], faces.shape[0]
    for i in range(n):
        out = ti.Matrix([[0, -1, -1], [0, -1, -1]])  # row d: the pair with the right / lower pixel
        ta = tri[i]
        right, below = ta, ta
        if i + 1 < n:
            right = tri[i + 1]
        if i + width < n:
            below = tri[i + width]
        if right != ta or below != ta:  # the pixel's coordinates only where needed (divisions)
            b, y, x = arrays.pixel(i, height, width)
            for d in ti.static(range(2)):
                tb = right if ti.static(d == 0) else below
                has_pair = x + 1 < width if ti.static(d == 0) else y + 1 < height
                if has_pair and tb != ta:
                    j = i + 1 if ti.static(d == 0) else i + width
                    front = 1
                    if tb >= 0 and (ta < 0 or depth[j] < depth[i]):
                        front = 0
                    t = ta if front == 1 else tb
                    ring = neighbours[t]
                    e = ti.Vector([-1, -1])
                    # T first; the contour often belongs to a thin rim face that covers no
                    # pixel centre: then look one ring further, across T's edges (not with
                    # nvdiffrast's rules). (A runtime loop: unrolled, the kernel took seconds
                    # to compile.)
                    for c in range(ti.static(1 if nv else 4)):
                        f = t
                        if c > 0:
                            f = ti.select(c == 1, ring[0], ti.select(c == 2, ring[1], ring[2]))
                        if f >= 0:
                            code = 0
                            if ti.static(on_the_fly):
                                code = _own_silhouettes(f, b * n_vertices, faces, neighbours, clip)
                            else:
                                code = bits[b * n_faces + f] & SILHOUETTE
                            if code != 0:
                                v = faces[f] + b * n_vertices
                                e = _face_edge(code, v, y, x, d, front, clip, height, width, nv)
                        if e[0] >= 0:
                            break
                    if e[0] >= 0:
                        out[d, 0], out[d, 1], out[d, 2] = front, e[0], e[1]
        for d in ti.static(range(2)):
            edges[2 * i + d] = ti.Vector([out[d, 0], out[d, 1], out[d, 2]])


@ti.func
def pair_crossing(
    i: ti.i32, d: ti.template(), e, clip: ti.template(), height: ti.i32, width: ti.i32
):
    """The pair of pixel i and its right (d = 0) or lower (d = 1) neighbour, crossed by the
    silhouette edge of its ``edges`` entry e (e[1] ≥ 0): (p, q, alpha) with p the front
    triangle's pixel, q the other one and alpha the crossing from p's centre towards q's.
    (Every local is assigned once: reverse mode then needs no stacks.)"""
    _, y, x = arrays.pixel(i, height, width)
    j = i + 1 if ti.static(d == 0) else i + width
    p = ti.select(e[0] == 1, i, j)
    return p, i + j - p, crossing(clip[e[1]], clip[e[2]], y, x, d, e[0], width, height)


def check_pair_inputs(color, edges, frame, image) -> int:
    """Validate the arrays of an op over the pixel pairs (antialias, nmr): ``color`` and
    ``image`` (N,) vectors of one channel count, ``edges`` (2·N,); returns the count."""
    n = frame.pixels
    check_length(color, n, "color", "one per pixel")
    check_length(image, n, "image", "one per pixel")
    check_length(edges, 2 * n, "edges", "two per pixel")
    if channels(image) != channels(color):
        raise UserError(f"image has {channels(image)} channels but color has {channels(color)}")
    return channels(color)


def detect(
    triangle_id,
    depth,
    clip,
    faces,
    neighbours,
    ranges,
    frame,
    bits,
    edges,
    rules: str = "taichi_dr",
    shared: bool = False,
) -> None:
    """Find the silhouette edge between every pixel and its right and lower neighbour.

    Inputs: ``triangle_id`` (N,) int32 and ``depth`` (N,) per pixel of ``frame``
    (N = B·H·W): any measure that grows away from the camera (eye-space distance, or the
    rasterizer's z-buffer keys, int64);
    ``clip`` (B·V,) vec4 per view and vertex; ``faces`` (F,) ivec3; ``neighbours`` (F,)
    ivec3 from :func:`edge_neighbours` (for several meshes concatenated into one: per
    mesh, offset by its first face); ``ranges`` (B,) ivec2 (first face, face count) per
    view. Outputs, allocated by the caller: ``bits`` (B·F,)
    int32 per (view, face) at b·F + f (bit k: edge k is a silhouette; FRONT / BACK: facing);
    ``edges`` (2·N,) ivec3 at 2·i + d for pixel i and its right (d = 0) or lower (d = 1)
    neighbour: (front, c0, c1), the crossing silhouette edge as indices into ``clip``
    (c0 = −1 if none) and front = 1 when pixel i is the front triangle's pixel.
    ``rules="nvdiffrast"``: only the front triangle's own edges, which must run at least
    as much across the pair as along it and may cross up to 1/16 of the pair beyond a
    centre (the blend clamps); every face counts as present in every view (``ranges``
    must be (0, F)). ``shared``: ``clip`` (V,) is one vertex set for every view.
    Not differentiable (run it outside the tape)."""
    n, views, n_faces = frame.pixels, frame.views, faces.shape[0]
    check_length(triangle_id, n, "triangle_id", "one per pixel")
    check_length(depth, n, "depth", "one per pixel")
    check_length(ranges, views, "ranges", "one per view")
    check_length(neighbours, n_faces, "neighbours", "one per face")
    check_length(bits, views * n_faces, "bits", "one per view and face")
    check_length(edges, 2 * n, "edges", "two per pixel")
    if rules not in RULES:
        raise UserError(f"unknown silhouette rules {rules!r}; choose one of {RULES}")
    if clip.shape[0] % views and not shared:
        raise UserError(f"clip has {clip.shape[0]} entries, not a multiple of {views} views")
    n_vertices = 0 if shared else clip.shape[0] // views
    on_the_fly = rules == "nvdiffrast" and views * n_faces <= ON_THE_FLY
    if not on_the_fly:
        _facing_bits(clip, faces, ranges, n_vertices, bits)
        _silhouette_bits(neighbours, ranges, bits)
    _detect(
        triangle_id,
        depth,
        clip,
        faces,
        neighbours,
        bits,
        frame.height,
        frame.width,
        n_vertices,
        edges,
        rules == "nvdiffrast",
        on_the_fly,
    )
