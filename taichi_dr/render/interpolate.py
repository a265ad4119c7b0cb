"""Interpolation: perspective-correct barycentrics recomputed from the triangle id.

For the pixel centre at NDC (x, y) and the triangle's clip vertices (xᵢ, yᵢ, zᵢ, wᵢ),
with aᵢ = xᵢ − x·wᵢ and bᵢ = yᵢ − y·wᵢ, the perspective-correct barycentrics are
λ = a × b / Σ(a × b) (homogeneous rasterization). This is differentiable in the clip
coordinates, works for triangles crossing the near plane (no clipped geometry needed),
and gives the eye-space depth Σ λᵢ wᵢ. Only visibility (the triangle id) comes from the
non-differentiable rasterizer.

Functions over flat arrays (see ``arrays``): :func:`barycentrics` (and eye depth, inf
where empty), :func:`surface` (the renderer's pass: barycentrics, depth, world position,
normal, colour and uv at once), :func:`footprint` (a pixel's size in uv units, for mip
selection) and :func:`interpolate` (any C-vector attribute). Each takes
``backward=True`` for its reverse pass where it is used outside a tape. In nvdiffrast's
layout (for ``taichi_dr.nvdiffrast``): :func:`rasterized` ((u, v, z/w, id + 1) and the
barycentrics' image-space derivatives) and :func:`attributes` (any channel count, with
image-space derivatives).
"""

import taichi as ti

from ..errors import UserError
from . import arrays
from .arrays import Frame, Int, IVec3, Real, Vec2, Vec3, Vec4


@ti.func
def perspective_barycentrics(
    c0: ti.template(), c1: ti.template(), c2: ti.template(), p: ti.template()
):
    """Perspective-correct barycentrics of NDC point ``p`` in the clip triangle c0 c1 c2."""
    a = ti.Vector([c0[0] - p[0] * c0[3], c1[0] - p[0] * c1[3], c2[0] - p[0] * c2[3]])
    b = ti.Vector([c0[1] - p[1] * c0[3], c1[1] - p[1] * c1[3], c2[1] - p[1] * c2[3]])
    lam = a.cross(b)
    s = lam[0] + lam[1] + lam[2]
    s = ti.select(ti.abs(s) > 1e-30, s, 1e-30)  # edge-on triangle: finite, not NaN
    return lam / s


@ti.func
def lerp(lam, values: ti.template(), base: ti.i32, f):
    """Σ λ_k values[base + f_k]: a vertex attribute at a point of face f."""
    return (
        lam[0] * values[base + f[0]] + lam[1] * values[base + f[1]] + lam[2] * values[base + f[2]]
    )


@ti.func
def uv_footprint(c0, c1, c2, p, uv, uvs: ti.template(), base: ti.i32, f, height, width):
    """The uv distance from ``uv`` (the value at NDC point p of face f, clip vertices
    c0 c1 c2) to the next pixel along x or y (the larger), on the face's plane: a pixel's
    texture footprint for mip selection."""
    lx = perspective_barycentrics(c0, c1, c2, p + ti.Vector([2.0 / width, 0.0]))
    ly = perspective_barycentrics(c0, c1, c2, p + ti.Vector([0.0, -2.0 / height]))
    dx = lerp(lx, uvs, base, f) - uv
    dy = lerp(ly, uvs, base, f) - uv
    return ti.sqrt(ti.max(dx.norm_sqr(), dy.norm_sqr()) + 1e-30)  # finite grad at 0


@ti.func
def _pixel_barycentrics(
    i: ti.i32, clip: ti.template(), faces: ti.template(), tri: ti.template(), V, H, W
):
    """Pixel i's view b, triangle t, face f, barycentrics λ and eye depth (0s and inf
    where empty)."""
    b, y, x = arrays.pixel(i, H, W)
    t = tri[i]
    lam = ti.Vector([0.0, 0.0, 0.0])
    z = ti.math.inf
    f = ti.Vector([0, 0, 0])
    if t >= 0:
        f = faces[t]
        base = b * V
        c0, c1, c2 = clip[base + f[0]], clip[base + f[1]], clip[base + f[2]]
        lam = perspective_barycentrics(c0, c1, c2, arrays.pixel_ndc(y, x, H, W))
        z = lam[0] * c0[3] + lam[1] * c1[3] + lam[2] * c2[3]
    return b, t, f, lam, z


@ti.kernel
def _barycentrics(
    clip: Vec4, faces: IVec3, tri: Int, V: ti.i32, H: ti.i32, W: ti.i32, bary: Vec3, depth: Real
):
    for i in range(tri.shape[0]):
        _, _, _, lam, z = _pixel_barycentrics(i, clip, faces, tri, V, H, W)
        bary[i] = lam
        depth[i] = z


@ti.kernel
def _surface(
    clip: Vec4,
    faces: IVec3,
    tri: Int,
    V: ti.i32,
    H: ti.i32,
    W: ti.i32,
    world: Vec3,
    normal: Vec3,
    colors: Vec3,
    uvs: Vec2,
    colors_stride: ti.i32,
    uvs_stride: ti.i32,
    bary: Vec3,
    depth: Real,
    position_out: Vec3,
    normal_out: Vec3,
    color_out: Vec3,
    uv_out: Vec2,
):
    for i in range(tri.shape[0]):
        b, t, f, lam, z = _pixel_barycentrics(i, clip, faces, tri, V, H, W)
        bary[i] = lam
        depth[i] = z
        pw = ti.Vector([0.0, 0.0, 0.0])
        nw = ti.Vector([0.0, 0.0, 0.0])
        cw = ti.Vector([0.0, 0.0, 0.0])
        uw = ti.Vector([0.0, 0.0])
        if t >= 0:
            pw = lerp(lam, world, b * V, f)
            nw = lerp(lam, normal, b * V, f)
            cw = lerp(lam, colors, b * colors_stride, f)
            uw = lerp(lam, uvs, b * uvs_stride, f)
        position_out[i] = pw
        normal_out[i] = nw
        color_out[i] = cw
        uv_out[i] = uw


@ti.kernel
def _footprint(
    uvs: Vec2,
    uvs_stride: ti.i32,
    clip: Vec4,
    faces: IVec3,
    tri: Int,
    V: ti.i32,
    H: ti.i32,
    W: ti.i32,
    out: Real,
):
    for i in range(tri.shape[0]):
        b, y, x = arrays.pixel(i, H, W)
        t = tri[i]
        size = 0.0
        if t >= 0:
            f = faces[t]
            c0, c1, c2 = clip[b * V + f[0]], clip[b * V + f[1]], clip[b * V + f[2]]
            p = arrays.pixel_ndc(y, x, H, W)
            uv = lerp(perspective_barycentrics(c0, c1, c2, p), uvs, b * uvs_stride, f)
            size = uv_footprint(c0, c1, c2, p, uv, uvs, b * uvs_stride, f, H, W)
        out[i] = size


_CHANNEL_KERNELS: dict = {}


def _channel_kernel(channels: int):
    """The interpolation kernel for C-channel attributes (compiled once per C)."""
    if channels not in _CHANNEL_KERNELS:
        Values = ti.types.ndarray(dtype=arrays.vector(channels), ndim=1)

        @ti.kernel
        def interpolate_channels(
            values: Values,
            stride: ti.i32,
            faces: IVec3,
            tri: Int,
            bary: Vec3,
            n: ti.i32,
            out: Values,
        ):
            for i in range(tri.shape[0]):
                t = tri[i]
                v = ti.Vector([0.0] * channels)  # not ti.zero(out[i]): that is out[i] · 0
                if t >= 0:
                    v = lerp(bary[i], values, (i // n) * stride, faces[t])
                out[i] = v

        _CHANNEL_KERNELS[channels] = interpolate_channels
    return _CHANNEL_KERNELS[channels]


def vertex_stride(values, frame: Frame, n_vertices: int) -> int:
    """0 for per-vertex values shared by the views, V for one copy per view (B·V rows)."""
    rows = values.shape[0]
    if rows == n_vertices:
        return 0
    if rows == frame.views * n_vertices:
        return n_vertices
    raise UserError(
        f"per-vertex values have {rows} rows; expected {n_vertices} (shared by the views) "
        f"or {frame.views} x {n_vertices} (one set per view)"
    )


def barycentrics(
    clip, faces, triangle_id, frame: Frame, n_vertices: int, bary, depth, backward=False
) -> None:
    """Perspective-correct barycentrics ``bary`` (N,) vec3 and eye depth ``depth`` (N,)
    (inf where empty) of the N = B·H·W pixels of ``frame``, from ``triangle_id`` (N,) and
    the clip coordinates ``clip`` (B·V,) vec4; differentiable in ``clip``.
    ``backward=True`` runs the reverse pass instead (as every differentiable stage
    function does): it adds ∂L/∂clip from the gradients of ``bary`` and ``depth``."""
    kernel = _barycentrics.grad if backward else _barycentrics
    kernel(clip, faces, triangle_id, n_vertices, frame.height, frame.width, bary, depth)


def surface(clip, faces, triangle_id, frame: Frame, n_vertices: int, vertex, pixel) -> None:
    """``barycentrics`` and, in the same pass, the pixels' world position, normal, colour
    and uv: ``vertex`` = (world (B·V,), normal (B·V,), colors, uvs) with colours and uvs
    (V,) or (B·V,); ``pixel`` = (bary, depth, position, normal, color, uv) outputs (N,)."""
    world, normal, colors, uvs = vertex
    _surface(
        clip,
        faces,
        triangle_id,
        n_vertices,
        frame.height,
        frame.width,
        world,
        normal,
        colors,
        uvs,
        vertex_stride(colors, frame, n_vertices),
        vertex_stride(uvs, frame, n_vertices),
        *pixel,
    )


def footprint(uvs, clip, faces, triangle_id, frame: Frame, n_vertices: int, out) -> None:
    """``out`` (N,): the uv distance to the next pixel along x or y (the larger), on the
    same triangle's plane — the pixel's texture footprint for mip selection."""
    _footprint(
        uvs,
        vertex_stride(uvs, frame, n_vertices),
        clip,
        faces,
        triangle_id,
        n_vertices,
        frame.height,
        frame.width,
        out,
    )


def interpolate(
    values, faces, triangle_id, bary, frame: Frame, n_vertices: int, out, backward=False
) -> None:
    """``out[i] = Σ λ_k values[face_k]`` for C-vector ``values`` (V,) or (B·V,), zero where
    the pixel is empty; differentiable in ``values`` and ``bary``."""
    channels = values.shape[1] if len(values.shape) == 2 else values.n
    kernel = _channel_kernel(channels)
    (kernel.grad if backward else kernel)(
        values,
        vertex_stride(values, frame, n_vertices),
        faces,
        triangle_id,
        bary,
        frame.height * frame.width,
        out,
    )


# --------------------------------------------------------------------------------------
# Rasterizer output as (u, v, z/w, id + 1) and attributes interpolated from it, with
# image-space derivatives: the layout of nvdiffrast's ops (array version, issue 14; used
# by ``taichi_dr.nvdiffrast``). Per-pixel arrays as everywhere (N = B·H·W, row 0 at the
# top of *its* clip space: callers that want row 0 at the bottom pass clip with y negated);
# channels of any count are 2-D (N, C) arrays, so one compiled kernel serves every count.
# ``rast`` (N,) vec4 = (u, v, z/w, id + 1) with u, v the barycentrics of the triangle's
# vertices 0 and 1; ``db`` (N,) vec4 = (∂u/∂X, ∂u/∂Y, ∂v/∂X, ∂v/∂Y) per pixel, X one
# column right, Y one row further in memory; zeros where empty.

Real2 = ti.types.ndarray(ndim=2)  # (n, C) scalars of the float type in use
ID_EXACT = 1 << 24  # ids + 1 up to here are exact in float32


@ti.func
def encode_id(t: ti.i32):
    """Triangle id t ≥ 0 as the float ``rast`` stores (t + 1 > 0; 0 means empty). Ids past
    2^24 − 1 are not exact in float32: there the int bits are stored as a (tiny, positive)
    float, which no exact id can equal."""
    out = ti.cast(t + 1, float)
    if ti.static(ti.lang.impl.default_cfg().default_fp == ti.f32):
        if t + 1 > ID_EXACT:
            out = ti.bit_cast(t + 1, ti.f32)
    return out


@ti.func
def decode_id(value):
    """The triangle id (−1 where empty) of a ``rast`` id value (:func:`encode_id`)."""
    t = -1
    if value >= 1.0:
        t = ti.cast(value, ti.i32) - 1
    elif value > 0.0:
        if ti.static(ti.lang.impl.default_cfg().default_fp == ti.f32):
            t = ti.bit_cast(value, ti.i32) - 1
    return t


@ti.kernel
def _rast(
    clip: Vec4,
    faces: IVec3,
    tri: Int,
    stride: ti.i32,
    H: ti.i32,
    W: ti.i32,
    rast: Vec4,
    db: Vec4,
    clamped: ti.template(),
    with_db: ti.template(),
):
    for i in range(tri.shape[0]):
        b, y, x = arrays.pixel(i, H, W)
        t = tri[i]
        r = ti.Vector([0.0, 0.0, 0.0, 0.0])
        d = ti.Vector([0.0, 0.0, 0.0, 0.0])
        if t >= 0:
            f = faces[t] + b * stride
            c0, c1, c2 = clip[f[0]], clip[f[1]], clip[f[2]]
            p = arrays.pixel_ndc(y, x, H, W)
            w = ti.Vector([c0[3], c1[3], c2[3]])
            a = ti.Vector([c0[0], c1[0], c2[0]]) - p[0] * w
            e = ti.Vector([c0[1], c1[1], c2[1]]) - p[1] * w
            lam = a.cross(e)
            s = lam.sum()
            s = ti.select(ti.abs(s) > 1e-30, s, 1e-30)  # edge-on: finite, not NaN
            u, v = lam[0] / s, lam[1] / s
            if ti.static(with_db):
                # λ' of one column right (NDC x + 2/W) and one row on (NDC y − 2/H)
                lx = (-w).cross(e) * (2.0 / W)
                ly = a.cross(-w) * (-2.0 / H)
                sx, sy = lx.sum(), ly.sum()
                d = ti.Vector([lx[0] - u * sx, ly[0] - u * sy, lx[1] - v * sx, ly[1] - v * sy])
                d /= s
            if ti.static(clamped):  # the output values; gradients use the plain formula
                u, v = ti.min(ti.max(u, 0.0), 1.0), ti.min(ti.max(v, 0.0), 1.0)
                uv = u + v
                if uv > 1.0:
                    u, v = u / uv, v / uv
                z = (lam[0] * c0[2] + lam[1] * c1[2] + lam[2] * c2[2]) / (lam.dot(w))
                r = ti.Vector([u, v, ti.min(ti.max(z, -1.0), 1.0), encode_id(t)])
            else:
                r = ti.Vector([u, v, 0.0, 0.0])  # z/w and the id carry no gradient
        rast[i] = r
        if ti.static(with_db):
            db[i] = d


def rasterized(clip, faces, triangle_id, frame: Frame, stride: int, rast, db, backward=False):
    """``rast`` (N,) vec4 = (u, v, z/w, id + 1) and, unless ``db`` is None, ``db`` (N,) vec4
    = ∂(u, v)/∂(X, Y) of the pixels of ``frame`` with ids ``triangle_id`` (N,) over
    ``clip`` (B·V,) vec4 (``stride`` V; 0: one vertex set shared by the views). Outputs are
    clamped like nvdiffrast's: u, v to [0, 1] with u + v ≤ 1, z/w to [−1, 1].
    ``backward=True`` adds ∂L/∂clip from ``rast.grad`` (u, v) and ``db.grad``, through the
    unclamped formula (as nvdiffrast)."""
    args = (clip, faces, triangle_id, stride, frame.height, frame.width, rast)
    if backward:
        _rast.grad(*args, rast if db is None else db, False, db is not None)
    else:
        _rast(*args, rast if db is None else db, True, db is not None)


@ti.kernel
def _rast_ids(rast: Vec4, ids: Int, depth: Real):
    for i in range(rast.shape[0]):
        r = rast[i]
        ids[i] = decode_id(r[3])
        depth[i] = r[2]


def rast_ids(rast, ids, depth) -> None:
    """Triangle ids ``ids`` (N,) int32 (−1 empty) and z/w ``depth`` (N,) of ``rast``."""
    _rast_ids(rast, ids, depth)


@ti.kernel
def _attributes(
    attr: Real2,
    stride: ti.i32,
    faces: IVec3,
    rast: Vec4,
    db: Vec4,
    pixels_per_view: ti.i32,
    selected: Int,
    out: Real2,
    out_da: Real2,
):
    A, n_da, F = attr.shape[1], selected.shape[0], faces.shape[0]
    for i in range(rast.shape[0]):
        r = rast[i]
        t = decode_id(r[3])
        if t >= 0 and t < F:
            f = faces[t] + (i // pixels_per_view) * stride
            u, v = r[0], r[1]
            for c in range(A):
                a0, a1, a2 = attr[f[0], c], attr[f[1], c], attr[f[2], c]
                out[i, c] = a2 + u * (a0 - a2) + v * (a1 - a2)
            d = ti.Vector([0.0, 0.0, 0.0, 0.0])
            if n_da > 0:
                d = db[i]
            for j in range(n_da):
                c = selected[j]
                a0, a1, a2 = attr[f[0], c], attr[f[1], c], attr[f[2], c]
                out_da[i, 2 * j] = d[0] * (a0 - a2) + d[2] * (a1 - a2)
                out_da[i, 2 * j + 1] = d[1] * (a0 - a2) + d[3] * (a1 - a2)
        else:
            for c in range(A):
                out[i, c] = 0.0
            for j in range(n_da):
                out_da[i, 2 * j] = 0.0
                out_da[i, 2 * j + 1] = 0.0


@ti.kernel
def _attributes_backward(
    attr: Real2,
    stride: ti.i32,
    faces: IVec3,
    rast: Vec4,
    db: Vec4,
    pixels_per_view: ti.i32,
    selected: Int,
    g_out: Real2,
    g_da: Real2,
    g_attr: Real2,
    g_rast: Vec4,
    g_db: Vec4,
    want_attr: ti.template(),
):
    A, n_da, F = attr.shape[1], selected.shape[0], faces.shape[0]
    for i in range(rast.shape[0]):
        r = rast[i]
        t = decode_id(r[3])
        gu, gv = 0.0, 0.0
        gd = ti.Vector([0.0, 0.0, 0.0, 0.0])
        if t >= 0 and t < F:
            f = faces[t] + (i // pixels_per_view) * stride
            u, v = r[0], r[1]
            for c in range(A):
                g = g_out[i, c]
                a0, a1, a2 = attr[f[0], c], attr[f[1], c], attr[f[2], c]
                gu += g * (a0 - a2)
                gv += g * (a1 - a2)
                if ti.static(want_attr):
                    g_attr[f[0], c] += u * g
                    g_attr[f[1], c] += v * g
                    g_attr[f[2], c] += (1.0 - u - v) * g
            d = ti.Vector([0.0, 0.0, 0.0, 0.0])
            if n_da > 0:
                d = db[i]
            for j in range(n_da):
                c = selected[j]
                gx, gy = g_da[i, 2 * j], g_da[i, 2 * j + 1]
                d0 = attr[f[0], c] - attr[f[2], c]
                d1 = attr[f[1], c] - attr[f[2], c]
                gd += ti.Vector([gx * d0, gy * d0, gx * d1, gy * d1])
                if ti.static(want_attr):
                    g0 = d[0] * gx + d[1] * gy
                    g1 = d[2] * gx + d[3] * gy
                    g_attr[f[0], c] += g0
                    g_attr[f[1], c] += g1
                    g_attr[f[2], c] -= g0 + g1
        g_rast[i] = ti.Vector([gu, gv, 0.0, 0.0])
        if n_da > 0:
            g_db[i] = gd


def attributes(attr, stride, faces, rast, db, frame: Frame, selected, out, out_da) -> None:
    """``out`` (N, A) = u·attr[t₀] + v·attr[t₁] + (1 − u − v)·attr[t₂] of each pixel's
    triangle ``faces[id]`` (0 where empty) from ``rast`` (N,) vec4 (see :func:`rasterized`);
    ``attr`` (rows, A) with ``stride`` rows per view (0: shared by the views). For the
    attribute indices ``selected`` (n,) int32, ``out_da`` (N, 2n) = (∂a/∂X, ∂a/∂Y) of each
    from ``db`` (N,) vec4. Ids outside ``faces`` count as empty."""
    _attributes(attr, stride, faces, rast, db, frame.height * frame.width, selected, out, out_da)


def attributes_backward(
    attr, stride, faces, rast, db, frame: Frame, selected, g_out, g_da, g_attr, g_rast, g_db
) -> None:
    """The reverse pass of :func:`attributes` (same inputs; output gradients ``g_out``
    (N, A) and ``g_da`` (N, 2n)): writes ``g_rast`` (N,) vec4 (u, v; zeros for z/w, id) and,
    when n > 0, ``g_db`` (N,) vec4; adds into ``g_attr`` (rows, A) unless it is None."""
    _attributes_backward(
        attr,
        stride,
        faces,
        rast,
        db,
        frame.height * frame.width,
        selected,
        g_out,
        g_da,
        attr if g_attr is None else g_attr,
        g_rast,
        g_db,
        g_attr is not None,
    )
