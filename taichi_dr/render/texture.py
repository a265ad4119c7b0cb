"""Textures: a level-0 image with gradients and its box-filtered mip pyramid.

Texel rows are stored top row first (like the image file); uv (0, 0) is the bottom-left
corner (OpenGL), so texel coordinates are ``(u·w − ½, (1 − v)·h − ½)``. Filters:
"nearest", "bilinear", "trilinear" (bilinear in the two mip levels around the level of
detail); wrap modes "repeat" and "clamp". Gradients reach ``texels`` through every mip
level because the pyramid is rebuilt by differentiable kernels in ``forward``.

``Texture`` keeps the texels and the pyramid in flat ndarrays (compile-once kernels),
``build_pyramid`` fills the pyramid, the ``ti.func`` ``sample`` reads it inside any kernel
and ``lookup`` samples n points. The second half (for ``taichi_dr.nvdiffrast``) samples
any channel count, batches of textures and cube maps, with nvdiffrast's texel layout and
level-of-detail rule: :func:`build_mips`, :func:`sample_stack` and :func:`sample_backward`.
"""

from typing import NamedTuple

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from . import arrays
from .arrays import Int, IVec3, Real, Vec2, Vec3, Vec4

FILTERS = ("nearest", "bilinear", "trilinear")
WRAPS = ("repeat", "clamp")


@ti.func
def _floor(x):
    """⌊x⌋ as i32, without ``ti.floor`` (Taichi 1.7.4's forward mode cannot compile it)."""
    i = ti.cast(x, ti.i32)  # truncates towards zero
    return i - ti.select(x < i, 1, 0)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_texture(height: int, width: int, filter: str, wrap: str) -> None:
    """Raise a one-line ``UserError`` for an unknown filter or wrap mode, or a mipmapped
    texture whose sides are not powers of two."""
    if filter not in FILTERS:
        raise UserError(f"unknown texture filter {filter!r}; choose one of {FILTERS}")
    if wrap not in WRAPS:
        raise UserError(f"unknown wrap mode {wrap!r}; choose one of {WRAPS}")
    if filter == "trilinear" and not (_is_pow2(height) and _is_pow2(width)):
        raise UserError(
            f"mipmapped textures need power-of-two sizes, got {width}x{height}; "
            "resize the texture or use texture_filter='bilinear' "
            "(command line: --texture-filter bilinear)"
        )


# A texture is a flat array of RGB texels: level k of the pyramid occupies
# ``texels[offset_k : offset_k + h_k · w_k]``, row-major, row 0 at the top; ``levels``
# (L,) ivec3 holds (offset_k, h_k, w_k). Level 0 alone (L = 1) for nearest and bilinear.


def mip_sizes(height: int, width: int, max_level: int | None = None) -> list:
    """(h_k, w_k) of levels 0..L: each level halves the previous one (a side of 1 stays 1)
    down to 1×1, or to level ``max_level``. A side > 1 that must be halved has to be even
    (each level is the 2×2 box average of the previous one): UserError otherwise."""
    sizes = [(int(height), int(width))]
    while sizes[-1] != (1, 1) and (max_level is None or len(sizes) <= max_level):
        h, w = sizes[-1]
        if (h > 1 and h % 2) or (w > 1 and w % 2):
            raise UserError(
                f"mipmap level {len(sizes) - 1} of a {width}x{height} texture is {w}x{h}, an "
                f"odd size that cannot be halved; pass max_mip_level={len(sizes) - 1} (or "
                "less), or use a texture whose sides stay even"
            )
        sizes.append((max(h // 2, 1), max(w // 2, 1)))
    return sizes


def mip_levels(height: int, width: int, filter: str) -> np.ndarray:
    """(L, 3) int32 rows (offset, height, width) of the levels ``filter`` samples: the
    full pyramid down to 1×1 for "trilinear", else level 0 only."""
    sizes = mip_sizes(height, width) if filter == "trilinear" else [(height, width)]
    count = len(sizes)
    offsets = np.cumsum([0] + [h * w for h, w in sizes])
    return np.array([(offsets[k], *sizes[k]) for k in range(count)], dtype=np.int32)


class Sampler(NamedTuple):
    """What a shading kernel samples: ``texels`` (n,) vec3 (the level-0 texels, or the
    whole pyramid), ``levels`` (L,) ivec3, and the ``filter`` and ``wrap`` names."""

    texels: object
    levels: object
    filter: str
    wrap: str


@ti.kernel
def _copy(src: Vec3, dst: Vec3):
    for i in range(src.shape[0]):
        dst[i] = src[i]


@ti.kernel
def _downsample(
    pyramid: Vec3, src: ti.i32, src_h: ti.i32, src_w: ti.i32, dst: ti.i32, h: ti.i32, w: ti.i32
):
    """Level (dst, h, w) = 2×2 box average of level (src, src_h, src_w) (edges repeated
    where a side is already 1)."""
    for i in range(h * w):
        y = i // w
        x = i - y * w
        y0, x0 = ti.min(2 * y, src_h - 1), ti.min(2 * x, src_w - 1)
        y1, x1 = ti.min(2 * y + 1, src_h - 1), ti.min(2 * x + 1, src_w - 1)
        pyramid[dst + i] = 0.25 * (
            pyramid[src + y0 * src_w + x0]
            + pyramid[src + y0 * src_w + x1]
            + pyramid[src + y1 * src_w + x0]
            + pyramid[src + y1 * src_w + x1]
        )


def build_pyramid(texels, pyramid, levels: np.ndarray, backward: bool = False) -> None:
    """Fill ``pyramid`` (all levels, (levels[-1].offset + h·w,) vec3) from level-0
    ``texels`` (h·w,) vec3, for the (L, 3) ``levels`` table of ``mip_levels``.
    Differentiable: ``backward=True`` adds ``pyramid.grad`` (every level) into
    ``texels.grad``, as a ``ti.ad.Tape`` would."""
    steps = [(_copy, (texels, pyramid))] + [
        (_downsample, (pyramid, *(int(v) for v in levels[k - 1]), *(int(v) for v in levels[k])))
        for k in range(1, len(levels))
    ]
    for kernel, args in reversed(steps) if backward else steps:
        (kernel.grad if backward else kernel)(*args)


@ti.func
def texel(texels: ti.template(), levels: ti.template(), wrap: ti.template(), level, y, x):
    """Texel (row y, column x) of ``level``, wrapped or clamped."""
    info = levels[level]
    if ti.static(wrap == WRAPS.index("repeat")):
        y, x = y % info[1], x % info[2]  # Taichi's % is non-negative for positive divisor
    else:
        y, x = ti.min(ti.max(y, 0), info[1] - 1), ti.min(ti.max(x, 0), info[2] - 1)
    return texels[info[0] + y * info[2] + x]


@ti.func
def bilinear(texels: ti.template(), levels: ti.template(), wrap: ti.template(), level, uv):
    info = levels[level]
    tx = uv[0] * info[2] - 0.5
    ty = (1.0 - uv[1]) * info[1] - 0.5
    ix, iy = _floor(tx), _floor(ty)
    fx, fy = tx - ix, ty - iy
    return (1 - fy) * (
        (1 - fx) * texel(texels, levels, wrap, level, iy, ix)
        + fx * texel(texels, levels, wrap, level, iy, ix + 1)
    ) + fy * (
        (1 - fx) * texel(texels, levels, wrap, level, iy + 1, ix)
        + fx * texel(texels, levels, wrap, level, iy + 1, ix + 1)
    )


@ti.func
def sample(
    texels: ti.template(),
    levels: ti.template(),
    filter: ti.template(),
    wrap: ti.template(),
    uv,
    footprint,
):
    """Colour at ``uv`` (``filter``, ``wrap``: indices into FILTERS, WRAPS);
    ``footprint`` = size of one pixel in uv units, picks the trilinear level."""
    out = ti.Vector([0.0, 0.0, 0.0])
    base = levels[0]
    if ti.static(filter == FILTERS.index("nearest")):
        iy = _floor((1.0 - uv[1]) * base[1])
        ix = _floor(uv[0] * base[2])
        out = texel(texels, levels, wrap, 0, iy, ix)
    elif ti.static(filter == FILTERS.index("bilinear")):
        out = bilinear(texels, levels, wrap, 0, uv)
    else:
        top = levels.shape[0] - 1
        size = footprint * ti.max(base[1], base[2])
        lod = ti.log(ti.max(size, 1.0)) / ti.log(2.0)
        lod = ti.min(lod, top * 1.0)
        l0 = _floor(lod)
        l1 = ti.min(l0 + 1, top)
        t = lod - l0
        out = (1.0 - t) * bilinear(texels, levels, wrap, l0, uv) + t * bilinear(
            texels, levels, wrap, l1, uv
        )
    return out


@ti.kernel
def _lookup(
    filter: ti.template(),
    wrap: ti.template(),
    texels: Vec3,
    levels: IVec3,
    uv: Vec2,
    footprint: Real,
    out: Vec3,
):
    for i in range(out.shape[0]):
        out[i] = sample(texels, levels, filter, wrap, uv[i], footprint[i])


def lookup(sampler: Sampler, uv, footprint, out, backward: bool = False) -> None:
    """``out[i]`` = the texture's colour at ``uv[i]`` (n,) vec2 with ``footprint[i]`` (n,).
    Differentiable in the texels, ``uv`` and ``footprint``: ``backward=True`` adds
    ``out.grad`` through the sampling into the inputs' gradients."""
    n = out.shape[0]
    for name, a in (("uv", uv), ("footprint", footprint)):
        if a.shape[0] != n:
            raise UserError(f"texture lookup: {name} has {a.shape[0]} entries, out has {n}")
    args = (*_statics(sampler), sampler.texels, sampler.levels, uv, footprint, out)
    (_lookup.grad if backward else _lookup)(*args)


def _statics(sampler: Sampler) -> tuple:
    check_texture(2, 2, sampler.filter, sampler.wrap)
    return FILTERS.index(sampler.filter), WRAPS.index(sampler.wrap)


class Texture:
    """An RGB texture of ``height`` × ``width`` texels (powers of two when mipmapped) as
    flat arrays: ``texels`` (h·w,) vec3 with gradients (level 0, row 0 at the top), and
    for "trilinear" the ``pyramid`` of every level, rebuilt by ``forward``."""

    def __init__(self, height: int, width: int, filter: str = "bilinear", wrap: str = "repeat"):
        check_texture(height, width, filter, wrap)
        self.height, self.width, self.filter, self.wrap = int(height), int(width), filter, wrap
        self.level_table = mip_levels(self.height, self.width, filter)
        self.levels = arrays.from_numpy(self.level_table, dtype=ti.i32)
        self.texels = arrays.empty(self.height * self.width, 3, grad=True)
        size = int(self.level_table[-1, 0] + self.level_table[-1, 1] * self.level_table[-1, 2])
        self.pyramid = arrays.empty(size, 3, grad=True) if len(self.level_table) > 1 else None
        self._plain = None  # the sampled array without gradients, made on demand

    def upload(self, image) -> None:
        """Set level 0 from a linear float image (H, W, 3), row 0 at the top."""
        image = np.asarray(image, dtype=np.float64)
        if image.shape != (self.height, self.width, 3):
            raise UserError(f"texture must be {self.height}x{self.width}x3, got {image.shape}")
        if not np.all(np.isfinite(image)):
            raise UserError("texture has NaN or inf texels; pass finite values")
        self.texels.from_numpy(image.reshape(-1, 3).astype(backend.np_real()))

    def image(self) -> np.ndarray:
        """Level 0 as an (H, W, 3) array."""
        return self.texels.to_numpy().reshape(self.height, self.width, 3)

    def grad(self) -> np.ndarray:
        """The gradient of level 0, (H, W, 3)."""
        return self.texels.grad.to_numpy().reshape(self.height, self.width, 3)

    def forward(self, grad: bool = True) -> Sampler:
        """Rebuild the pyramid from ``texels`` (inside the tape when the texels are
        differentiated) and return the ``Sampler`` to shade with; ``grad=False``: sample
        a copy without gradients (the shading kernel then skips the texture's adjoint)."""
        sampled = self.texels if self.pyramid is None else self.pyramid
        if not grad:
            if self._plain is None:
                self._plain = arrays.empty(sampled.shape[0], 3)
            if self.pyramid is None:
                arrays.detach(self.texels, self._plain)
            else:
                arrays.untaped(build_pyramid, self.texels, self._plain, self.level_table)
            sampled = self._plain
        elif self.pyramid is not None:
            build_pyramid(self.texels, self.pyramid, self.level_table)
        return Sampler(sampled, self.levels, self.filter, self.wrap)

    def zero_grad(self) -> None:
        for a in (self.texels, self.pyramid):
            if a is not None:
                a.grad.fill(0)


# --------------------------------------------------------------------------------------
# Generic textures (array version, issue 14; the sampler of ``taichi_dr.nvdiffrast``):
# any channel count, a batch of textures, 2D textures and cube maps, four boundary modes,
# mip levels chosen per pixel from image-space uv derivatives, hand-written reverse passes.
#
# Here texel row 0 lies at t = 0 (no flip): texel (y, x) of an h × w level has its centre
# at s = (x + ½)/w, t = (y + ½)/h. An image has F faces (1; 6 for a cube map, ordered
# +x, −x, +y, −y, +z, −z, each with OpenGL's (s, t) orientation) of h × w texels. Level 0
# of image b is ``tex`` (Bt·F·h·w, C) rows b·F·h·w onwards; levels 1..L are ``mips``
# (Bt·M, C) rows b·M + offset_k onwards (M: the texels of levels 1..L of one image);
# ``levels`` (L + 1,) ivec3 holds (offset_k, h_k, w_k), offset_0 = 0. Channels are the
# columns of 2-D arrays, so one compiled kernel serves every channel count.

NV_FILTERS = ("nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARIES = ("wrap", "clamp", "zero", "cube")
Real2 = ti.types.ndarray(ndim=2)
_FAR = 1e30  # |coordinate| beyond this (or NaN): an invalid lookup, 0 without gradient


def mip_table(sizes: list, faces: int = 1) -> np.ndarray:
    """(L + 1, 3) int32 rows (offset, h, w) for the ``sizes`` of :func:`mip_sizes`:
    level 0 at offset 0 of ``tex``, levels 1..L packed from offset 0 of one image's
    ``mips`` block; its length M (the last offset plus the last level) is ``mip_count``."""
    rows, offset = [(0, *sizes[0])], 0
    for h, w in sizes[1:]:
        rows.append((offset, h, w))
        offset += faces * h * w
    return np.array(rows, dtype=np.int32)


def mip_count(table: np.ndarray, faces: int = 1) -> int:
    """The texels of levels 1..L of one image (the ``mips`` block length M)."""
    if len(table) < 2:
        return 0
    return int(table[-1, 0] + faces * table[-1, 1] * table[-1, 2])


@ti.kernel
def _downsample_images(
    src: Real2,
    src_offset: ti.i32,
    src_stride: ti.i32,
    src_h: ti.i32,
    src_w: ti.i32,
    dst: Real2,
    dst_offset: ti.i32,
    dst_stride: ti.i32,
    h: ti.i32,
    w: ti.i32,
    faces: ti.i32,
    images: ti.i32,
    g_src: Real2,
    g_dst: Real2,
    backward: ti.template(),
):
    for k in range(images * faces * h * w):
        image = k // (h * w)
        j = k - image * h * w
        y = j // w
        x = j - y * w
        b = image // faces
        face = image - b * faces
        s0 = src_offset + b * src_stride + face * src_h * src_w
        y0, x0 = ti.min(2 * y, src_h - 1), ti.min(2 * x, src_w - 1)
        y1, x1 = ti.min(2 * y + 1, src_h - 1), ti.min(2 * x + 1, src_w - 1)
        t = dst_offset + b * dst_stride + face * h * w + j
        for c in range(src.shape[1]):
            if ti.static(backward):
                g = 0.25 * g_dst[t, c]
                g_src[s0 + y0 * src_w + x0, c] += g
                g_src[s0 + y0 * src_w + x1, c] += g
                g_src[s0 + y1 * src_w + x0, c] += g
                g_src[s0 + y1 * src_w + x1, c] += g
            else:
                dst[t, c] = 0.25 * (
                    src[s0 + y0 * src_w + x0, c]
                    + src[s0 + y0 * src_w + x1, c]
                    + src[s0 + y1 * src_w + x0, c]
                    + src[s0 + y1 * src_w + x1, c]
                )


def build_mips(tex, mips, table: np.ndarray, faces: int, images: int, backward=False) -> None:
    """Fill ``mips`` (images·M, C) with levels 1..L of the ``images`` textures of ``faces``
    faces in ``tex`` (their level 0; see :func:`mip_table`), each level the 2×2 box
    average of the one before (a side of 1 averages 2×1 / 1×2). ``backward=True`` adds
    ``mips.grad`` through the levels into ``tex.grad`` (Taichi ndarrays or tensors that
    carry ``.grad``)."""
    M = mip_count(table, faces)
    h0, w0 = int(table[0, 1]), int(table[0, 2])
    steps = []
    for k in range(1, len(table)):
        src = (tex, 0, faces * h0 * w0) if k == 1 else (mips, int(table[k - 1, 0]), M)
        steps.append((src, k))
    if backward:
        steps.reverse()
    for (src, offset, stride), k in steps:
        sh, sw = (int(v) for v in table[k - 1, 1:])
        args = (src, offset, stride, sh, sw, mips, int(table[k, 0]), M, *table[k, 1:], faces)
        args = (*(int(a) if isinstance(a, np.integer) else a for a in args), images)
        if backward:
            _downsample_images(*args, src.grad, mips.grad, True)
        else:
            _downsample_images(*args, src, mips, False)


@ti.func
def _face_basis(face):
    """Unit vectors (∂sc/∂d, ∂tc/∂d, ∂m/∂d) of cube face ``face``: direction d has face
    coordinates sc = gs·d, tc = gt·d over the major-axis length m = gm·d, and
    d = sc·gs + tc·gt + m·gm."""
    gs = ti.Vector([0.0, 0.0, -1.0])
    gt = ti.Vector([0.0, -1.0, 0.0])
    gm = ti.Vector([1.0, 0.0, 0.0])
    if face == 1:
        gs, gm = ti.Vector([0.0, 0.0, 1.0]), ti.Vector([-1.0, 0.0, 0.0])
    elif face == 2:
        gs, gt = ti.Vector([1.0, 0.0, 0.0]), ti.Vector([0.0, 0.0, 1.0])
        gm = ti.Vector([0.0, 1.0, 0.0])
    elif face == 3:
        gs, gt = ti.Vector([1.0, 0.0, 0.0]), ti.Vector([0.0, 0.0, -1.0])
        gm = ti.Vector([0.0, -1.0, 0.0])
    elif face == 4:
        gs, gm = ti.Vector([1.0, 0.0, 0.0]), ti.Vector([0.0, 0.0, 1.0])
    elif face == 5:
        gs, gm = ti.Vector([-1.0, 0.0, 0.0]), ti.Vector([0.0, 0.0, -1.0])
    return gs, gt, gm


@ti.func
def _major_face(d):
    """The cube face a direction points at: its major axis, ties going to z, then y."""
    ax, ay, az = ti.abs(d[0]), ti.abs(d[1]), ti.abs(d[2])
    face = ti.select(d[0] >= 0.0, 0, 1)
    if az >= ax and az >= ay:
        face = ti.select(d[2] >= 0.0, 4, 5)
    elif ay >= ax:
        face = ti.select(d[1] >= 0.0, 2, 3)
    return face


@ti.func
def _cube_texel(face, y, x, n):
    """(face, row, column) of texel (y, x) of an n × n face level, where one of y, x may
    lie one texel outside the face: then the texel of the neighbouring face under its
    centre's direction."""
    gs, gt, gm = _face_basis(face)
    d = (2.0 * (x + 0.5) / n - 1.0) * gs + (2.0 * (y + 0.5) / n - 1.0) * gt + gm
    f = _major_face(d)
    hs, ht, hm = _face_basis(f)
    m = hm.dot(d)
    s = (hs.dot(d) / m + 1.0) * 0.5
    t = (ht.dot(d) / m + 1.0) * 0.5
    x2 = ti.min(ti.max(_floor(s * n), 0), n - 1)
    y2 = ti.min(ti.max(_floor(t * n), 0), n - 1)
    return f, y2, x2


@ti.func
def _coords(uv: ti.template(), i, cube: ti.i32):
    """Pixel i's texture coordinates: (valid, face, s, t, ∂s/∂d, ∂t/∂d, basis...) with the
    direction derivatives for cube maps (zero for 2D)."""
    zero = ti.Vector([0.0, 0.0, 0.0])
    face, s, t, m, sc = 0, 0.0, 0.0, 1.0, 0.0
    gs, gt, gm = zero, zero, zero
    ds, dt = zero, zero
    valid = True
    if cube:
        d = ti.Vector([uv[i, 0], uv[i, 1], uv[i, 2]])
        face = _major_face(d)
        gs, gt, gm = _face_basis(face)
        m = gm.dot(d)
        valid = m > 0.0 and m < _FAR
        if valid:
            sc = gs.dot(d)
            tc = gt.dot(d)
            s = (sc / m + 1.0) * 0.5
            t = (tc / m + 1.0) * 0.5
            ds = 0.5 * (gs / m - sc * gm / (m * m))
            dt = 0.5 * (gt / m - tc * gm / (m * m))
    else:
        s, t = uv[i, 0], uv[i, 1]
        valid = ti.abs(s) < _FAR and ti.abs(t) < _FAR
    return valid, face, s, t, ds, dt, gs, gt, gm, m


@ti.func
def _hessian_times(g, gm, c, m, v):
    """(∂²/∂d²) of 0.5·(g·d)/(gm·d) times v, at g·d = c, gm·d = m (cube coordinates)."""
    gv = gm.dot(v)
    return 0.5 * (-(g * gv + gm * g.dot(v)) / (m * m) + 2.0 * c * gm * gv / (m * m * m))


@ti.func
def _lod(uv_da: ti.template(), i, cube: ti.i32, w0, h0, ds, dt):
    """log2 of the largest singular value of the texel-space Jacobian J of the pixel
    (from ``uv_da``), its derivative G = ∂ℓ/∂J, and J's columns' inputs: returns
    (ℓ, G (2×2), DX, DY) with DX, DY the direction (or uv) derivatives per pixel step."""
    DX = ti.Vector([0.0, 0.0, 0.0])
    DY = ti.Vector([0.0, 0.0, 0.0])
    J = ti.Matrix([[0.0, 0.0], [0.0, 0.0]])
    if cube:
        DX = ti.Vector([uv_da[i, 0], uv_da[i, 2], uv_da[i, 4]])
        DY = ti.Vector([uv_da[i, 1], uv_da[i, 3], uv_da[i, 5]])
        J = w0 * ti.Matrix([[ds.dot(DX), ds.dot(DY)], [dt.dot(DX), dt.dot(DY)]])
    else:
        DX = ti.Vector([uv_da[i, 0], uv_da[i, 2], 0.0])
        DY = ti.Vector([uv_da[i, 1], uv_da[i, 3], 0.0])
        J = ti.Matrix([[w0 * DX[0], w0 * DY[0]], [h0 * DX[1], h0 * DY[1]]])
    A = J[0, 0] ** 2 + J[0, 1] ** 2 + J[1, 0] ** 2 + J[1, 1] ** 2
    D = J[0, 0] * J[1, 1] - J[0, 1] * J[1, 0]
    R = ti.sqrt(ti.max(A * A - 4.0 * D * D, 0.0))
    sigma2 = 0.5 * (A + R)
    lod = -_FAR
    G = ti.Matrix([[0.0, 0.0], [0.0, 0.0]])
    if sigma2 > 1e-30 and sigma2 < _FAR:
        lod = 0.5 * ti.log(sigma2) / ti.log(2.0)
        cof = ti.Matrix([[J[1, 1], -J[1, 0]], [-J[0, 1], J[0, 0]]])
        dsigma2 = J
        if R > 1e-12 * A:
            dsigma2 = J + (A * J - 2.0 * D * cof) / R
        G = (0.5 / (sigma2 * ti.log(2.0))) * dsigma2
    return lod, G, DX, DY


TAPS = 8  # per pixel: the 4 bilinear taps in each of 2 mip levels


@ti.func
def _pixel_lod(i, levels: ti.template(), uv: ti.template(), uv_da: ti.template(),
               bias: ti.template(), filter, boundary, has_da, has_bias):  # fmt: skip
    """Pixel i's (valid, face, s, t, unclamped level ℓ, levels k0 and k1, the weight of
    k1) for ``filter`` (an index into NV_FILTERS)."""
    cube = ti.cast(boundary == 3, ti.i32)
    valid, face, s, t, ds, dt, gs, gt, gm, m = _coords(uv, i, cube)
    top = levels.shape[0] - 1
    base = levels[0]
    lod_raw = 0.0
    if filter >= 2:
        if has_da:
            lod_raw = _lod(uv_da, i, cube, base[2] * 1.0, base[1] * 1.0, ds, dt)[0]
        if has_bias:
            lod_raw += bias[i]
    lod = ti.min(ti.max(lod_raw, 0.0), top * 1.0)
    k0 = ti.min(_floor(lod), top)
    frac = ti.select(filter == 3, lod - k0, 0.0)
    return valid, face, s, t, lod_raw, k0, ti.min(k0 + 1, top), frac


@ti.func
def _weight(qx, qy, fx, fy, sx, sy):
    """Bilinear weight of tap (qx, qy) ∈ {0, 1}² at fractions (fx, fy), and its derivatives
    by s and t (sx = ∂x/∂s, sy = ∂y/∂t)."""
    wx = ti.select(qx == 1, fx, 1.0 - fx)
    wy = ti.select(qy == 1, fy, 1.0 - fy)
    return wx * wy, sx * ti.select(qx == 1, 1.0, -1.0) * wy, sy * ti.select(qy == 1, 1.0, -1.0) * wx


@ti.kernel
def _taps(
    levels: IVec3,
    n_faces: ti.i32,
    n_images: ti.i32,
    pixels_per_view: ti.i32,
    mip_stride: ti.i32,
    uv: Real2,
    uv_da: Real2,
    bias: Real,
    filter: ti.i32,
    boundary: ti.i32,
    has_da: ti.i32,
    has_bias: ti.i32,
    addr: Int,
    weights: Vec4,
):
    base = levels[0]
    for i in range(addr.shape[0] // TAPS):
        valid, face, s, t, lod_raw, k0, k1, frac = _pixel_lod(
            i, levels, uv, uv_da, bias, filter, boundary, has_da, has_bias
        )
        image = ti.select(n_images > 1, i // pixels_per_view, 0)
        if boundary == 0:  # wrap: the fractional part (slope 1)
            s, t = s - ti.floor(s), t - ti.floor(t)
        for k in range(TAPS):  # a runtime loop: one copy of the tap code to compile
            j, q = k // 4, k % 4
            a = -1
            wv = ti.Vector([0.0, 0.0, 0.0, 0.0])
            if valid and (j == 0 or frac > 0.0) and (filter > 0 or q == 0):
                level = ti.select(j == 0, k0, k1)
                info = levels[level]
                h, w = info[1], info[2]
                f, x, y = face, 0, 0
                wq, dws, dwt = 1.0, 0.0, 0.0
                ok = True
                if filter == 0:  # nearest: the texel under (s, t) of level 0
                    x = _floor(ti.min(ti.max(s, -2.0), 2.0) * w)
                    y = _floor(ti.min(ti.max(t, -2.0), 2.0) * h)
                    if boundary == 2:
                        ok = 0 <= x and x < w and 0 <= y and y < h
                    x, y = ti.min(ti.max(x, 0), w - 1), ti.min(ti.max(y, 0), h - 1)
                else:
                    xf, yf = s * w - 0.5, t * h - 0.5
                    sx, sy = w * 1.0, h * 1.0  # ∂x/∂s, ∂y/∂t
                    if boundary == 1:  # clamp to the edge texels' centres: no slope there
                        sx = ti.select(xf < 0.0 or xf > w - 1.0, 0.0, sx)
                        sy = ti.select(yf < 0.0 or yf > h - 1.0, 0.0, sy)
                        xf, yf = ti.min(ti.max(xf, 0.0), w - 1.0), ti.min(ti.max(yf, 0.0), h - 1.0)
                    else:
                        xf, yf = (
                            ti.min(ti.max(xf, -2.0), w + 1.0),
                            ti.min(ti.max(yf, -2.0), h + 1.0),
                        )
                    x0, y0 = _floor(xf), _floor(yf)
                    fx, fy = xf - x0, yf - y0
                    qx, qy = q % 2, q // 2
                    wq, dws, dwt = _weight(qx, qy, fx, fy, sx, sy)
                    x, y = x0 + qx, y0 + qy
                    if boundary == 0:
                        x, y = x % w, y % h
                    elif boundary == 1:
                        x, y = ti.min(x, w - 1), ti.min(y, h - 1)
                    out_x, out_y = x < 0 or x >= w, y < 0 or y >= h
                    if boundary == 2:
                        ok = not (out_x or out_y)
                    elif boundary == 3:
                        # a cube corner: the tap off both edges is the mean of the other three
                        cx = ti.select(x0 < 0, 0, ti.select(x0 + 1 >= w, 1, -1))
                        cy = ti.select(y0 < 0, 0, ti.select(y0 + 1 >= h, 1, -1))
                        if cx >= 0 and cy >= 0:
                            if qx == cx and qy == cy:
                                ok = False
                            else:
                                wc, dcs, dct = _weight(cx, cy, fx, fy, sx, sy)
                                wq, dws, dwt = wq + wc / 3.0, dws + dcs / 3.0, dwt + dct / 3.0
                        if ok and (out_x or out_y):  # off one edge: the neighbouring face
                            f, y, x = _cube_texel(face, y, x, w)
                if ok:
                    local = (f * h + y) * w + x
                    if level == 0:
                        a = image * n_faces * base[1] * base[2] + local
                    else:
                        a = -2 - (image * mip_stride + info[0] + local)
                    wv = ti.Vector([(1.0 - frac) * wq, (1.0 - frac) * dws, (1.0 - frac) * dwt, -wq])
                    if j == 1:
                        wv = ti.Vector([frac * wq, frac * dws, frac * dwt, wq])
            addr[i * TAPS + k] = a
            weights[i * TAPS + k] = wv


@ti.func
def _fetch(tex: ti.template(), mips: ti.template(), a, c):
    """Channel c of tap address a: a row of tex (a ≥ 0), of mips (a ≤ −2), or 0 (a = −1)."""
    v = 0.0
    if a >= 0:
        v = tex[a, c]
    elif a <= -2:
        v = mips[-2 - a, c]
    return v


@ti.kernel
def _gather(tex: Real2, mips: Real2, addr: Int, weights: Vec4, out: Real2):
    for i in range(out.shape[0]):
        for c in range(out.shape[1]):
            acc = 0.0
            for q in ti.static(range(TAPS)):
                a = addr[i * TAPS + q]
                if a != -1:
                    acc += weights[i * TAPS + q][0] * _fetch(tex, mips, a, c)
            out[i, c] = acc


@ti.kernel
def _gather_backward(
    tex: Real2,
    mips: Real2,
    addr: Int,
    weights: Vec4,
    g_out: Real2,
    g_tex: Real2,
    g_mips: Real2,
    g_coords: Vec3,
    want_tex: ti.template(),
    want_mips: ti.template(),
):
    for i in range(g_out.shape[0]):
        acc = ti.Vector([0.0, 0.0, 0.0])  # ∂L/∂s, ∂L/∂t, ∂L/∂ℓ
        for c in range(g_out.shape[1]):
            g = g_out[i, c]
            for q in ti.static(range(TAPS)):
                a = addr[i * TAPS + q]
                if a != -1:
                    wv = weights[i * TAPS + q]
                    acc += g * _fetch(tex, mips, a, c) * ti.Vector([wv[1], wv[2], wv[3]])
                    if a >= 0:
                        if ti.static(want_tex):
                            g_tex[a, c] += g * wv[0]
                    elif ti.static(want_mips):
                        g_mips[-2 - a, c] += g * wv[0]
        g_coords[i] = acc


@ti.kernel
def _coords_backward(
    levels: IVec3,
    uv: Real2,
    uv_da: Real2,
    bias: Real,
    filter: ti.i32,
    boundary: ti.i32,
    has_da: ti.i32,
    has_bias: ti.i32,
    g_coords: Vec3,
    g_uv: Real2,
    g_da: Real2,
    g_bias: Real,
    want: ti.types.vector(3, ti.i32),
):
    top = levels.shape[0] - 1
    base = levels[0]
    for i in range(g_coords.shape[0]):
        cube = ti.cast(boundary == 3, ti.i32)
        valid, face, s, t, ds, dt, gs, gt, gm, m = _coords(uv, i, cube)
        g_s, g_t, g_lod = g_coords[i][0], g_coords[i][1], g_coords[i][2]
        lod_raw = 0.0
        G = ti.Matrix([[0.0, 0.0], [0.0, 0.0]])
        DX, DY = ds * 0.0, ds * 0.0
        if filter >= 2:
            if has_da:
                lod_raw, G, DX, DY = _lod(uv_da, i, cube, base[2] * 1.0, base[1] * 1.0, ds, dt)
            if has_bias:
                lod_raw += bias[i]
        if not (filter == 3 and lod_raw > 0.0 and lod_raw < top and valid):
            g_lod = 0.0
        if cube:
            gd = g_s * ds + g_t * dt
            if g_lod != 0.0 and has_da:
                n = base[2] * 1.0
                vs = g_lod * (G[0, 0] * DX + G[0, 1] * DY)
                vt = g_lod * (G[1, 0] * DX + G[1, 1] * DY)
                sc, tc = (s * 2.0 - 1.0) * m, (t * 2.0 - 1.0) * m
                gd += n * (_hessian_times(gs, gm, sc, m, vs) + _hessian_times(gt, gm, tc, m, vt))
                if want[1]:
                    gx = n * g_lod * (G[0, 0] * ds + G[1, 0] * dt)
                    gy = n * g_lod * (G[0, 1] * ds + G[1, 1] * dt)
                    for a in ti.static(range(3)):
                        g_da[i, 2 * a] = gx[a]
                        g_da[i, 2 * a + 1] = gy[a]
            if want[0]:
                for a in ti.static(range(3)):
                    g_uv[i, a] = gd[a]
        else:
            if want[0]:
                g_uv[i, 0] = g_s
                g_uv[i, 1] = g_t
            if want[1] and g_lod != 0.0 and has_da:
                w0, h0 = base[2] * 1.0, base[1] * 1.0
                g_da[i, 0] = g_lod * G[0, 0] * w0
                g_da[i, 1] = g_lod * G[0, 1] * w0
                g_da[i, 2] = g_lod * G[1, 0] * h0
                g_da[i, 3] = g_lod * G[1, 1] * h0
        if want[2]:
            g_bias[i] = g_lod


class Stack(NamedTuple):
    """A batch of ``images`` textures of ``faces`` faces as the generic sampler reads them:
    ``tex`` (images·F·h·w, C) level 0, ``mips`` (images·M, C) levels 1..L (one row at
    least), ``levels`` (L + 1,) ivec3 array and ``table`` its NumPy copy (:func:`mip_table`)."""

    tex: object
    mips: object
    levels: object
    table: np.ndarray
    faces: int
    images: int


def check_modes(filter: str, boundary: str) -> None:
    """UserError for an unknown filter or boundary mode of the generic sampler."""
    if filter not in NV_FILTERS:
        raise UserError(f"unknown filter_mode {filter!r}; choose one of {NV_FILTERS}")
    if boundary not in BOUNDARIES:
        raise UserError(f"unknown boundary_mode {boundary!r}; choose one of {BOUNDARIES}")


_SCALARS: dict = {}


def _scalar():
    """A one-element array standing in for an absent per-pixel scalar input."""
    key = (backend.current_arch(), backend.precision(), id(ti.lang.impl.get_runtime().prog))
    if key not in _SCALARS:
        _SCALARS.clear()
        _SCALARS[key] = arrays.empty(1)
    return _SCALARS[key]


def _lookup_args(uv, uv_da, bias, filter, boundary):
    check_modes(filter, boundary)
    return (
        uv,
        uv if uv_da is None else uv_da,
        _scalar() if bias is None else bias,
        NV_FILTERS.index(filter),
        BOUNDARIES.index(boundary),
        int(uv_da is not None),
        int(bias is not None),
    )


def sample_stack(
    stack: Stack, uv, uv_da, bias, filter, boundary, pixels_per_view, addr, weights, out
) -> None:
    """``out`` (N, C) = the textures of ``stack`` at ``uv`` (N, 2), or cube-map directions
    (N, 3) for ``boundary="cube"``, with ``filter`` ∈ NV_FILTERS. Pixel i reads image
    i // ``pixels_per_view`` (or image 0 when there is one). Mip filters pick the level
    ℓ = log2 σ_max(J) (+ ``bias`` (N,)), J the texel-space Jacobian from ``uv_da`` (N, 4)
    = (∂s/∂X, ∂s/∂Y, ∂t/∂X, ∂t/∂Y), or (N, 6) direction derivatives for cube maps; either
    may be None (not both, for mip filters). Invalid coordinates (NaN, inf, a zero
    direction) give 0. Also writes each lookup's TAPS taps, which the reverse pass reads:
    ``addr`` (N·TAPS,) int32 (a row of ``tex`` if ≥ 0, row −2 − a of ``mips`` if ≤ −2,
    none if −1) and ``weights`` (N·TAPS,) vec4 (the weight, its derivatives by s and t,
    and the weight within its level, negated in the first level)."""
    _taps(
        stack.levels,
        stack.faces,
        stack.images,
        pixels_per_view,
        mip_count(stack.table, stack.faces),
        *_lookup_args(uv, uv_da, bias, filter, boundary),
        addr,
        weights,
    )
    _gather(stack.tex, stack.mips, addr, weights, out)


def sample_backward(
    stack: Stack, uv, uv_da, bias, filter, boundary, addr, weights, g_out, g_coords, grads
) -> None:
    """The reverse pass of :func:`sample_stack` (same inputs and taps; ``g_out`` (N, C);
    ``g_coords`` (N,) vec3 work space): ``grads`` = (g_tex, g_mips, g_uv, g_da, g_bias),
    each None or an array shaped like its input; adds into g_tex and g_mips, writes the
    per-pixel ones (allocate them zeroed)."""
    g_tex, g_mips, g_uv, g_da, g_bias = grads
    _gather_backward(
        stack.tex,
        stack.mips,
        addr,
        weights,
        g_out,
        stack.tex if g_tex is None else g_tex,
        stack.mips if g_mips is None else g_mips,
        g_coords,
        g_tex is not None,
        g_mips is not None,
    )
    if g_uv is None and g_da is None and g_bias is None:
        return
    args = _lookup_args(uv, uv_da, bias, filter, boundary)
    _coords_backward(
        stack.levels,
        *args,
        g_coords,
        uv if g_uv is None else g_uv,
        args[1] if g_da is None else g_da,
        args[2] if g_bias is None else g_bias,
        ti.Vector([int(g is not None) for g in (g_uv, g_da, g_bias)]),
    )
