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
``backward=True`` for its reverse pass where it is used outside a tape.
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
def _lerp(lam, values: ti.template(), base: ti.i32, f):
    """Σ λ_k values[base + f_k]: a vertex attribute at a point of face f."""
    return (
        lam[0] * values[base + f[0]] + lam[1] * values[base + f[1]] + lam[2] * values[base + f[2]]
    )


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
            pw = _lerp(lam, world, b * V, f)
            nw = _lerp(lam, normal, b * V, f)
            cw = _lerp(lam, colors, b * colors_stride, f)
            uw = _lerp(lam, uvs, b * uvs_stride, f)
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
            la = perspective_barycentrics(c0, c1, c2, p)
            lx = perspective_barycentrics(c0, c1, c2, p + ti.Vector([2.0 / W, 0.0]))
            ly = perspective_barycentrics(c0, c1, c2, p + ti.Vector([0.0, -2.0 / H]))
            uv = _lerp(la, uvs, b * uvs_stride, f)
            dx = _lerp(lx, uvs, b * uvs_stride, f) - uv
            dy = _lerp(ly, uvs, b * uvs_stride, f) - uv
            size = ti.sqrt(ti.max(dx.norm_sqr(), dy.norm_sqr()) + 1e-30)  # finite grad at 0
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
                    v = _lerp(bary[i], values, (i // n) * stride, faces[t])
                out[i] = v

        _CHANNEL_KERNELS[channels] = interpolate_channels
    return _CHANNEL_KERNELS[channels]


def _stride(values, frame: Frame, n_vertices: int) -> int:
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
        _stride(colors, frame, n_vertices),
        _stride(uvs, frame, n_vertices),
        *pixel,
    )


def footprint(uvs, clip, faces, triangle_id, frame: Frame, n_vertices: int, out) -> None:
    """``out`` (N,): the uv distance to the next pixel along x or y (the larger), on the
    same triangle's plane — the pixel's texture footprint for mip selection."""
    _footprint(
        uvs,
        _stride(uvs, frame, n_vertices),
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
        _stride(values, frame, n_vertices),
        faces,
        triangle_id,
        bary,
        frame.height * frame.width,
        out,
    )
