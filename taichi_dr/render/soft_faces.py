"""Soft rasterizer, part 1: a face as the soft rasterizer sees it, and the parameters.

Array version (issue 13) of the face records of ``soft.SoftRasterizer``, shared by
candidate selection (``soft_select``) and the blend (``soft_blend``). The model (see
``soft_blend``): pixel i and face j meet with coverage D_ij = sigmoid(±d²_ij/σ), d the
distance from the pixel centre to the face's boundary in isotropic NDC units (the
shorter image side spans 2), and a normalised depth z_ij = (far − w)/(far − near) from
perspective-correct barycentrics clamped to the face.

Per-face records turn each (pixel, face) pair into a few multiply-adds (q: isotropic
screen point, p: NDC point, s_v: the face's screen vertices):

* ``screen`` (3×2): s_v = (x/w, y/w) · scale, one row per vertex;
* ``line`` (3×3): edge k (s_k → s_k+1) as a, b, c with a q_x + b q_y + c the signed
  distance from q to the edge's line, positive on the face's inner side;
* ``along`` (3×3): α, β, γ with t = α q_x + β q_y + γ the position of q's projection
  along edge k (0 at s_k, 1 at s_k+1; −1 for a zero-length edge); not differentiated;
* ``bary`` (3×3): A, B, C with u_v = A + B p_x + C p_y vertex v's homogeneous
  barycentric (the p_x p_y terms of a × b cancel);
* ``depth`` (3): each vertex's eye depth (clip w).

``face_records`` computes them from the clip coordinates and ``face_records_adjoint``
takes their gradients back to the clip coordinates (hand-written: the blend's backward
pass sums the records' gradients in registers and calls it once per face).

A vertex with w ≤ 0 is divided by 1 instead: selection never draws such faces.

The parameters travel as one small real array (``soft_params``), so that changing σ,
γ, ε, the cutoff, near/far or the background compiles nothing.
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..camera import check_depth_range
from ..errors import UserError
from . import arrays

# offsets into the parameter array of ``soft_params``
INV_SIGMA, INV_GAMMA, EPS, RADIUS2, RADIUS, NEAR, FAR, INV_SPAN, BACKGROUND = range(9)
NUM_PARAMS = BACKGROUND + 3

SIGMA = 1e-4  # the default σ everywhere (RenderSettings, torch ops): PyTorch3D's fit-mesh tutorial

# Array arguments of the soft rasterizer's kernels. Taichi never differentiates them (the
# blend's adjoint is hand-written), so arrays with and without gradient storage share one
# compiled kernel (``arrays.no_grad``).
Real, Int, Vec3, Vec4, IVec2, IVec3 = (
    arrays.no_grad(a)
    for a in (arrays.Real, arrays.Int, arrays.Vec3, arrays.Vec4, arrays.IVec2,
              arrays.IVec3)
)  # fmt: skip
Mat32 = arrays.no_grad(ti.types.ndarray(dtype=ti.types.matrix(3, 2), ndim=1))  # float in use
Mat3 = arrays.no_grad(ti.types.ndarray(dtype=ti.math.mat3, ndim=1))
IVec4 = arrays.no_grad(ti.types.ndarray(dtype=ti.types.vector(4, ti.i32), ndim=1))
U64 = arrays.no_grad(ti.types.ndarray(dtype=ti.u64, ndim=1))
Vec5 = arrays.no_grad(ti.types.ndarray(dtype=ti.types.vector(5), ndim=1))  # float in use


def radius(sigma: float, cutoff: float) -> float:
    """Distance (isotropic NDC units) beyond which D < ``cutoff`` outside a face."""
    return math.sqrt(sigma * math.log(1.0 / cutoff - 1.0))


def soft_params(
    sigma: float = SIGMA,
    gamma: float = 1e-4,
    eps: float = 1e-3,
    cutoff: float = 1e-4,
    near: float = 0.1,
    far: float = 100.0,
    background=(0.0, 0.0, 0.0),
):
    """The soft rasterizer's parameters as a real ndarray of ``NUM_PARAMS``: ``sigma``
    (σ, coverage sharpness, isotropic NDC units²), ``gamma`` (γ, depth softmax
    temperature), ``eps`` (ε, background depth), ``cutoff`` (coverage below which a face
    is not a candidate), ``near``/``far`` (the depth range normalised to [0, 1], shared by
    every view of a batch) and ``background`` (RGB). Offsets: the module's constants."""
    for name, value in (("sigma", sigma), ("gamma", gamma)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value}")
    if not math.isfinite(eps):
        raise UserError(f"eps must be a finite number, got {eps}")
    if not (0.0 < cutoff < 0.5):
        raise UserError(f"cutoff must be in (0, 0.5), got {cutoff}")
    check_depth_range(near, far)
    bg = np.asarray(background, dtype=np.float64)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)):
        raise UserError(f"background must be a finite RGB colour, got {background}")
    r = radius(sigma, cutoff)
    values = [1.0 / sigma, 1.0 / gamma, eps, r * r, r, near, far, 1.0 / (far - near), *bg]
    return arrays.from_numpy(np.array(values))


# e^x for x ≤ 0 in the float type in use (``exp_nonpositive``): exactly 0 below UNDERFLOW,
# 2^k e^r with |r| ≤ ln2/2 otherwise, e^r by its Taylor polynomial to DEGREE (truncation
# below 2^-26 in f32, 2^-58 in f64: the float's rounding) and ln 2 = LN2_HI + LN2_LO (Cody and
# Waite: k · LN2_HI is exact)
EXP_POLY = {
    "f32": {"DEGREE": 7, "UNDERFLOW": -87.0, "LN2_HI": 0.693145751953125,
            "LN2_LO": 1.428606765330187e-06, "BIAS": 127, "MANTISSA": 23},
    "f64": {"DEGREE": 13, "UNDERFLOW": -708.0, "LN2_HI": 6.93147180369123816490e-01,
            "LN2_LO": 1.90821492927058770002e-10, "BIAS": 1023, "MANTISSA": 52},
}  # fmt: skip


def _exp_constant(name: str):
    """``EXP_POLY``'s constant ``name`` for the float type in use."""
    return EXP_POLY[backend.precision()][name]


@ti.func
def exp_nonpositive(x):
    """e^min(x, 0), accurate to the float's rounding, exactly 1 at 0 and exactly 0 below
    ``EXP_POLY``'s UNDERFLOW (no subnormals). Unlike ``ti.exp`` (a call into libm) it is
    plain arithmetic, so that LLVM vectorises the blend's lanes (``LANES``)."""
    degree, low = ti.static(_exp_constant("DEGREE"), _exp_constant("UNDERFLOW"))
    hi, lo = ti.static(_exp_constant("LN2_HI"), _exp_constant("LN2_LO"))
    bias, mantissa = ti.static(_exp_constant("BIAS"), _exp_constant("MANTISSA"))
    xc = ti.max(ti.min(x, 0.0), low)
    k = ti.floor(xc * ti.static(1.0 / math.log(2.0)) + 0.5)
    r = xc - k * hi - k * lo
    poly = ti.cast(ti.static(1.0 / math.factorial(degree)), float)
    for n in ti.static(range(degree - 1, -1, -1)):  # Horner: Σ r^n/n!, one FMA a degree
        poly = poly * r + ti.static(1.0 / math.factorial(n))
    scale = 0.0
    if ti.static(backend.precision() == "f32"):
        scale = ti.bit_cast((ti.cast(k, ti.i32) + bias) << mantissa, float)
    else:
        scale = ti.bit_cast((ti.cast(k, ti.i64) + bias) << mantissa, float)
    return ti.select(x < low, 0.0, poly * scale)


@ti.func
def pixel_step(height: ti.i32, width: ti.i32):
    """The NDC distance between neighbouring pixel centres along x and y."""
    return ti.Vector([2.0 / width, 2.0 / height])


@ti.func
def pixel_center(y, x, step):
    """NDC of the centre of pixel (row y, column x), rows growing downwards, from
    ``pixel_step``: ``arrays.pixel_ndc`` up to rounding, without a division per pixel."""
    return ti.Vector([(x + 0.5) * step[0] - 1.0, 1.0 - (y + 0.5) * step[1]])


@ti.func
def iso_scale(height: ti.i32, width: ti.i32):
    """NDC → isotropic screen units (the shorter image side spans 2)."""
    m = ti.min(width, height)
    return ti.Vector([width / m, height / m])


@ti.func
def face_records(c: ti.template(), scale):
    """Records of the face with clip coordinates c (3 rows of 4): (screen, line, along,
    bary, depth)."""
    w = ti.Vector([ti.select(c[k, 3] > 0.0, c[k, 3], 1.0) for k in ti.static(range(3))])
    s = ti.Matrix(
        [[c[k, 0] / w[k] * scale[0], c[k, 1] / w[k] * scale[1]] for k in ti.static(range(3))]
    )
    area = (s[1, :] - s[0, :]).cross(s[2, :] - s[0, :])
    orient = ti.select(area < 0.0, -1.0, 1.0)
    line = ti.Matrix.zero(float, 3, 3)
    along = ti.Matrix.zero(float, 3, 3)
    bary = ti.Matrix.zero(float, 3, 3)
    for k in ti.static(range(3)):
        i, j = ti.static((k + 1) % 3, (k + 2) % 3)
        e = s[i, :] - s[k, :]
        ee = e.dot(e)
        ok = ee > 0.0
        inv_len = orient / ti.sqrt(ti.select(ok, ee, 1.0))
        a, b = -e[1] * inv_len, e[0] * inv_len
        line[k, 0] = a
        line[k, 1] = b
        line[k, 2] = -(a * s[k, 0] + b * s[k, 1])
        inv_len2 = ti.select(ok, 1.0 / ti.select(ok, ee, 1.0), 0.0)
        along[k, 0] = e[0] * inv_len2
        along[k, 1] = e[1] * inv_len2
        along[k, 2] = ti.select(ok, -e.dot(s[k, :]) * inv_len2, -1.0)
        # u_k = a_i b_j − a_j b_i with a_v = x_v − p_x w_v, b_v = y_v − p_y w_v
        bary[k, 0] = c[i, 0] * c[j, 1] - c[j, 0] * c[i, 1]
        bary[k, 1] = c[j, 3] * c[i, 1] - c[i, 3] * c[j, 1]
        bary[k, 2] = c[j, 0] * c[i, 3] - c[i, 0] * c[j, 3]
    depth = ti.Vector([c[0, 3], c[1, 3], c[2, 3]])
    return s, line, along, bary, depth


@ti.func
def face_records_adjoint(c, scale, g_screen, g_line, g_bary, g_depth):
    """The gradient (3 rows of 4) of c, the clip coordinates of ``face_records``, from
    the gradients of its screen, line, bary and depth records."""
    w = ti.Vector([ti.select(c[k, 3] > 0.0, c[k, 3], 1.0) for k in ti.static(range(3))])
    s = ti.Matrix(
        [[c[k, 0] / w[k] * scale[0], c[k, 1] / w[k] * scale[1]] for k in ti.static(range(3))]
    )
    area = (s[1, :] - s[0, :]).cross(s[2, :] - s[0, :])
    orient = ti.select(area < 0.0, -1.0, 1.0)
    g_s = g_screen  # a copy (ti.func arguments are values)
    g = ti.Matrix.zero(float, 3, 4)
    for k in ti.static(range(3)):
        i, j = ti.static((k + 1) % 3, (k + 2) % 3)
        e = s[i, :] - s[k, :]
        ee = e.dot(e)
        ok = ee > 0.0
        inv_len = orient / ti.sqrt(ti.select(ok, ee, 1.0))
        a, b = -e[1] * inv_len, e[0] * inv_len
        # c_k = −(a s_k,x + b s_k,y)
        g_a = g_line[k, 0] - g_line[k, 2] * s[k, 0]
        g_b = g_line[k, 1] - g_line[k, 2] * s[k, 1]
        g_s[k, 0] -= g_line[k, 2] * a
        g_s[k, 1] -= g_line[k, 2] * b
        # (a, b) = (−e_y, e_x) · orient / |e|
        g_e = inv_len * ti.Vector([g_b, -g_a])
        g_e -= ti.select(ok, (a * g_a + b * g_b) / ti.select(ok, ee, 1.0), 0.0) * e
        g_s[i, 0] += g_e[0]
        g_s[i, 1] += g_e[1]
        g_s[k, 0] -= g_e[0]
        g_s[k, 1] -= g_e[1]
        # bary row k: A = x_i y_j − x_j y_i, B = w_j y_i − w_i y_j, C = x_j w_i − x_i w_j
        gA, gB, gC = g_bary[k, 0], g_bary[k, 1], g_bary[k, 2]
        g[i, 0] += gA * c[j, 1] - gC * c[j, 3]
        g[i, 1] += gB * c[j, 3] - gA * c[j, 0]
        g[i, 3] += gC * c[j, 0] - gB * c[j, 1]
        g[j, 0] += gC * c[i, 3] - gA * c[i, 1]
        g[j, 1] += gA * c[i, 0] - gB * c[i, 3]
        g[j, 3] += gB * c[i, 1] - gC * c[i, 0]
        g[k, 3] += g_depth[k]
    for k in ti.static(range(3)):  # s_k = (x_k, y_k) / w_k · scale
        g[k, 0] += g_s[k, 0] * scale[0] / w[k]
        g[k, 1] += g_s[k, 1] * scale[1] / w[k]
        g_w = -(g_s[k, 0] * s[k, 0] + g_s[k, 1] * s[k, 1]) / w[k]
        g[k, 3] += ti.select(c[k, 3] > 0.0, g_w, 0.0)
    return g


@ti.func
def distance(screen: ti.template(), line: ti.template(), along: ti.template(), q):
    """A face's records at isotropic screen point q: (d², inside, nearest, l) — squared
    distance to the face's boundary, whether q is strictly inside, which boundary
    feature is nearest (edge k: k; vertex v: 3 + v) and, for an edge, q's signed distance
    l to its line (d² = l²). Only select, no min/max."""
    dx, dy = q[0] - screen[0, 0], q[1] - screen[0, 1]
    d2, nearest, l_near = dx * dx + dy * dy, 3, 0.0
    for v in ti.static(range(1, 3)):
        dx, dy = q[0] - screen[v, 0], q[1] - screen[v, 1]
        dv = dx * dx + dy * dy
        closer = dv < d2
        d2 = ti.select(closer, dv, d2)
        nearest = ti.select(closer, 3 + v, nearest)
    inside = True
    for k in ti.static(range(3)):
        lk = line[k, 0] * q[0] + line[k, 1] * q[1] + line[k, 2]
        t = along[k, 0] * q[0] + along[k, 1] * q[1] + along[k, 2]
        inside = inside & (lk > 0.0)
        closer = (t >= 0.0) & (t <= 1.0) & (lk * lk < d2)
        d2 = ti.select(closer, lk * lk, d2)
        nearest = ti.select(closer, k, nearest)
        l_near = ti.select(closer, lk, l_near)
    return d2, inside, nearest, l_near


@ti.func
def barycentrics(bary: ti.template(), p):
    """A face's ``bary`` record at NDC point p: (λ, u, Σu, sign) — perspective-correct
    barycentrics λ clamped to the face, from u = max(sign · u_plane, 0), sign making
    Σ u_plane ≥ 0 (λ = 1/3 when u = 0)."""
    u = ti.Vector([bary[v, 0] + bary[v, 1] * p[0] + bary[v, 2] * p[1] for v in ti.static(range(3))])
    sign = ti.select(u.sum() < 0.0, -1.0, 1.0)
    u = ti.select(sign * u > 0.0, sign * u, 0.0)
    total = u.sum()
    lam = ti.select(total > 0.0, u * (1.0 / ti.select(total > 0.0, total, 1.0)), 1.0 / 3.0)
    return lam, u, total, sign
