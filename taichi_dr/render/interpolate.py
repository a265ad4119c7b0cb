"""Interpolation: perspective-correct barycentrics recomputed from the triangle id.

For the pixel centre at NDC (x, y) and the triangle's clip vertices (xᵢ, yᵢ, zᵢ, wᵢ),
with aᵢ = xᵢ − x·wᵢ and bᵢ = yᵢ − y·wᵢ, the perspective-correct barycentrics are
λ = a × b / Σ(a × b) (homogeneous rasterization). This is differentiable in the clip
coordinates, works for triangles crossing the near plane (no clipped geometry needed),
and gives the eye-space depth Σ λᵢ wᵢ. Only visibility (the triangle id) comes from the
non-differentiable rasterizer.

Owns ``bary`` (H, W, 3) and ``depth`` (H, W; eye-space distance along −z, inf where
empty); both carry gradients. ``interpolate(values, out)`` fills any per-vertex field
(V, C) into a per-pixel field (H, W, C).
"""

import taichi as ti

from .. import backend
from ..errors import UserError
from . import arrays
from .arrays import Frame, Int, IVec3, Real, Vec2, Vec3, Vec4


@ti.func
def pixel_ndc(y: ti.i32, x: ti.i32, width: ti.i32, height: ti.i32):
    """NDC of the centre of pixel (row y, column x); rows grow downwards."""
    return ti.Vector([(x + 0.5) / width * 2.0 - 1.0, 1.0 - (y + 0.5) / height * 2.0])


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


@ti.data_oriented
class Interpolator:
    def __init__(self, width: int, height: int):
        real = backend.real()
        self.width, self.height = int(width), int(height)
        shape = (self.height, self.width)
        self.bary = ti.Vector.field(3, real, shape=shape, **backend.diff())
        self.depth = ti.field(real, shape=shape, **backend.diff())

    @ti.kernel
    def _barycentrics(
        self,
        clip: ti.template(),
        faces: ti.template(),
        tri: ti.template(),
        values: ti.template(),
        outs: ti.template(),
        stop: ti.template(),
    ):
        for y, x in self.depth:
            for field in ti.static(stop):
                ti.stop_grad(field)
            t = tri[y, x]
            lam = ti.Vector([0.0, 0.0, 0.0])
            depth = ti.math.inf
            f = ti.Vector([0, 0, 0])
            if t >= 0:
                f = faces[t]
                c0, c1, c2 = clip[f[0]], clip[f[1]], clip[f[2]]
                lam = perspective_barycentrics(c0, c1, c2, pixel_ndc(y, x, self.width, self.height))
                depth = lam[0] * c0[3] + lam[1] * c1[3] + lam[2] * c2[3]
            self.bary[y, x] = lam
            self.depth[y, x] = depth
            for k in ti.static(range(len(values))):
                v = ti.zero(outs[k][y, x])
                if t >= 0:
                    v = (
                        lam[0] * values[k][f[0]]
                        + lam[1] * values[k][f[1]]
                        + lam[2] * values[k][f[2]]
                    )
                outs[k][y, x] = v

    @ti.kernel
    def _interpolate(
        self, values: ti.template(), faces: ti.template(), tri: ti.template(), out: ti.template()
    ):
        for y, x in out:
            t = tri[y, x]
            v = ti.zero(out[y, x])
            if t >= 0:
                f = faces[t]
                lam = self.bary[y, x]
                v = lam[0] * values[f[0]] + lam[1] * values[f[1]] + lam[2] * values[f[2]]
            out[y, x] = v

    @ti.kernel
    def _footprint(
        self,
        uvs: ti.template(),
        clip: ti.template(),
        faces: ti.template(),
        tri: ti.template(),
        out: ti.template(),
        stop: ti.template(),
    ):
        for y, x in out:
            for field in ti.static(stop):
                ti.stop_grad(field)
            t = tri[y, x]
            size = 0.0
            if t >= 0:
                f = faces[t]
                c0, c1, c2 = clip[f[0]], clip[f[1]], clip[f[2]]
                u0, u1, u2 = uvs[f[0]], uvs[f[1]], uvs[f[2]]
                p = pixel_ndc(y, x, self.width, self.height)
                step = ti.Vector([2.0 / self.width, -2.0 / self.height])
                la = perspective_barycentrics(c0, c1, c2, p)
                lx = perspective_barycentrics(c0, c1, c2, p + ti.Vector([step[0], 0.0]))
                ly = perspective_barycentrics(c0, c1, c2, p + ti.Vector([0.0, step[1]]))
                uv = la[0] * u0 + la[1] * u1 + la[2] * u2
                dx = lx[0] * u0 + lx[1] * u1 + lx[2] * u2 - uv
                dy = ly[0] * u0 + ly[1] * u1 + ly[2] * u2 - uv
                size = ti.sqrt(ti.max(dx.norm_sqr(), dy.norm_sqr()) + 1e-30)  # finite grad at 0
            out[y, x] = size

    def footprint(self, uvs, clip, faces, triangle_id, out, stop=()) -> None:
        """``out[y, x]`` = uv distance to the next pixel along x or y (the larger), on the
        same triangle's plane — the texture footprint of the pixel for mip selection."""
        self._footprint(uvs, clip, faces, triangle_id, out, stop)

    def forward(self, clip, faces, triangle_id, attributes=(), stop=()) -> None:
        """Barycentrics and depth for every covered pixel of ``triangle_id`` (H, W), and in
        the same pass ``interpolate`` for each ``(values, out)`` pair of ``attributes``.
        ``stop``: input fields that get no gradient (their reverse pass is compiled out)."""
        values = tuple(v for v, _ in attributes)
        outs = tuple(o for _, o in attributes)
        self._barycentrics(clip, faces, triangle_id, values, outs, stop)

    def interpolate(self, values, faces, triangle_id, out) -> None:
        """``out[y, x] = Σ λᵢ values[face[i]]``; zero where the pixel is empty."""
        self._interpolate(values, faces, triangle_id, out)

    def zero_grad(self) -> None:
        backend.zero_grads(self.bary, self.depth)


# --------------------------------------------------------------------------- array version
# Compile-once kernels over ndarrays (issue 13); see ``arrays`` for the layout.


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
