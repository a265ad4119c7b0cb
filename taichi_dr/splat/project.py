"""Per-Gaussian stage: EWA projection, screen extent, and colour from spherical harmonics,
with hand-written backward passes.

Gaussian g and camera c give record ``i = c · N + g``. Conventions (gsplat's, see the
package docstring): world→camera ``viewmats`` (OpenCV: x right, y down, z forward), pinhole
``Ks`` = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] mapping to pixel coordinates in which pixel
(row i, column j) is the unit square with centre (j + ½, i + ½).

* camera point p = R μ + t; culled unless near < p_z < far;
* Σ3 = R_q diag(s)² R_qᵀ (q = (w, x, y, z) normalised here, s linear), Σc = R Σ3 Rᵀ;
* J = [[fx/z, 0, −fx x/z²], [0, fy/z, −fy y/z²]] at p (no frustum clamp), Σ2 = J Σc Jᵀ + ε I;
* mean2d = (fx x/z + cx, fy y/z + cy); conic (a, b, c) = the upper triangle of Σ2⁻¹;
* screen extent: a pixel can reach α ≥ 1/255 only inside the ellipse dᵀ Σ2⁻¹ d ≤ k² with
  k² = 2 ln(255 o), whose bounding box has half-widths k √Σ2_xx, k √Σ2_yy (gsplat's
  opacity-aware 3.33σ bound; exact, so tiling never changes the image). The box is padded
  by 0.1 % + 10⁻³ px against rounding and clipped to the image; Gaussians with o < 1/255,
  det Σ2 ≤ 0 or an empty box are culled (radii 0, no tiles).

Backward (matrix gradients G with dL = tr(Gᵀ dX), all symmetric where X is): the conic's
gradient G_M = [[g_a, g_b/2], [g_b/2, g_c]] (b appears twice in Σ2⁻¹), G_Σ2 = −Σ2⁻¹ G_M Σ2⁻¹,
G_J = 2 G_Σ2 J Σc, G_Σc = Jᵀ G_Σ2 J, G_Σ3 = Rᵀ G_Σc R, G_R += 2 G_Σc R Σ3, G_(R_q S) =
2 G_Σ3 R_q S, then to q̂, q (projected onto the tangent of the unit sphere, / |q|) and s.
"""

import taichi as ti

I32 = ti.types.ndarray(dtype=ti.i32, ndim=1)
I32_2D = ti.types.ndarray(dtype=ti.i32, ndim=2)
TILE = 16  # pixels per tile side
ALPHA_MIN = 1.0 / 255.0  # fragments below this opacity are skipped
BOX_PAD = (1e-3, 1e-2)  # relative (of k²), absolute (pixels) padding of box and row spans

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)  # fmt: skip
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)  # fmt: skip


# ------------------------------------------------------------------------ shared math
@ti.func
def _view(viewmats: ti.template(), c):
    R = ti.Matrix.zero(float, 3, 3)
    t = ti.Vector.zero(float, 3)
    for r in ti.static(range(3)):
        for k in ti.static(range(3)):
            R[r, k] = viewmats[c, r, k]
        t[r] = viewmats[c, r, 3]
    return R, t


@ti.func
def _vec3(a: ti.template(), g):
    return ti.Vector([a[g, 0], a[g, 1], a[g, 2]], float)


@ti.func
def _rotation(q):
    """Rotation matrix of the unit quaternion q = (w, x, y, z)."""
    w, x, y, z = q[0], q[1], q[2], q[3]
    return ti.Matrix(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        float,
    )


@ti.func
def _covariance(quats: ti.template(), scales: ti.template(), g):
    """(q̂, |q|, R_q, M = R_q diag(s), Σ3 = M Mᵀ) of Gaussian g."""
    q = ti.Vector([quats[g, 0], quats[g, 1], quats[g, 2], quats[g, 3]], float)
    qn = q.norm()
    qh = q / qn
    Rq = _rotation(qh)
    s = _vec3(scales, g)
    M = Rq @ ti.Matrix([[s[0], 0, 0], [0, s[1], 0], [0, 0, s[2]]], float)
    return qh, qn, Rq, M, M @ M.transpose()


@ti.func
def _jacobian(p, fx, fy):
    iz = 1.0 / p[2]
    return ti.Matrix(
        [[fx * iz, 0.0, -fx * p[0] * iz * iz], [0.0, fy * iz, -fy * p[1] * iz * iz]], float
    )


@ti.func
def _screen_covariance(A, eps2d):
    """(a, b, c, det) of Σ2 = A Aᵀ + ε I = [[a, b], [b, c]] for A = J R R_q diag(s)
    (2 × 3). det is Cauchy–Binet's sum of squared 2 × 2 minors of A plus the ε terms: no
    cancellation, so the conic of a needle (nearly singular A Aᵀ) stays accurate in
    float32 where a·c − b² would lose every digit."""
    S2 = A @ A.transpose()
    m01 = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
    m02 = A[0, 0] * A[1, 2] - A[0, 2] * A[1, 0]
    m12 = A[0, 1] * A[1, 2] - A[0, 2] * A[1, 1]
    det = m01 * m01 + m02 * m02 + m12 * m12 + eps2d * (S2[0, 0] + S2[1, 1] + eps2d)
    return S2[0, 0] + eps2d, S2[0, 1], S2[1, 1] + eps2d, det


@ti.func
def _sh_basis(v, degree):
    """The 16 real SH basis values at unit direction v (3DGS signs); past ``degree``: 0."""
    x, y, z = v[0], v[1], v[2]
    b = ti.Vector.zero(float, 16)
    b[0] = SH_C0
    if degree >= 1:
        b[1], b[2], b[3] = -SH_C1 * y, SH_C1 * z, -SH_C1 * x
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        b[4] = SH_C2[0] * x * y
        b[5] = SH_C2[1] * y * z
        b[6] = SH_C2[2] * (2 * zz - xx - yy)
        b[7] = SH_C2[3] * x * z
        b[8] = SH_C2[4] * (xx - yy)
        if degree >= 3:
            b[9] = SH_C3[0] * y * (3 * xx - yy)
            b[10] = SH_C3[1] * x * y * z
            b[11] = SH_C3[2] * y * (4 * zz - xx - yy)
            b[12] = SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy)
            b[13] = SH_C3[4] * x * (4 * zz - xx - yy)
            b[14] = SH_C3[5] * z * (xx - yy)
            b[15] = SH_C3[6] * x * (xx - 3 * yy)
    return b


@ti.func
def _sh_basis_grad(v, w, degree):
    """Σ_k w_k ∂b_k/∂v (3-vector) for per-coefficient weights w (16)."""
    x, y, z = v[0], v[1], v[2]
    g = ti.Vector.zero(float, 3)
    if degree >= 1:
        g += SH_C1 * ti.Vector([-w[3], -w[1], w[2]], float)
    if degree >= 2:
        c = SH_C2
        g += w[4] * c[0] * ti.Vector([y, x, 0.0], float)
        g += w[5] * c[1] * ti.Vector([0.0, z, y], float)
        g += w[6] * c[2] * ti.Vector([-2 * x, -2 * y, 4 * z], float)
        g += w[7] * c[3] * ti.Vector([z, 0.0, x], float)
        g += w[8] * c[4] * ti.Vector([2 * x, -2 * y, 0.0], float)
        if degree >= 3:
            xx, yy, zz = x * x, y * y, z * z
            d = SH_C3
            g += w[9] * d[0] * ti.Vector([6 * x * y, 3 * xx - 3 * yy, 0.0], float)
            g += w[10] * d[1] * ti.Vector([y * z, x * z, x * y], float)
            g += w[11] * d[2] * ti.Vector([-2 * x * y, 4 * zz - xx - 3 * yy, 8 * y * z], float)
            g += w[12] * d[3] * ti.Vector([-6 * x * z, -6 * y * z, 6 * zz - 3 * xx - 3 * yy], float)
            g += w[13] * d[4] * ti.Vector([4 * zz - 3 * xx - yy, -2 * x * y, 8 * x * z], float)
            g += w[14] * d[5] * ti.Vector([2 * x * z, -2 * y * z, xx - yy], float)
            g += w[15] * d[6] * ti.Vector([3 * xx - 3 * yy, -6 * x * y, 0.0], float)
    return g


# ------------------------------------------------------------------------ projection
@ti.kernel
def project_forward(
    means: ti.types.ndarray(ndim=2),
    quats: ti.types.ndarray(ndim=2),
    scales: ti.types.ndarray(ndim=2),
    opacities: ti.types.ndarray(ndim=1),
    viewmats: ti.types.ndarray(ndim=3),
    Ks: ti.types.ndarray(ndim=3),
    width: ti.i32,
    height: ti.i32,
    near: float,
    far: float,
    eps2d: float,
    params: ti.types.ndarray(ndim=2),
    depths: ti.types.ndarray(ndim=1),
    radii: I32_2D,
    boxes: I32_2D,
    spans: ti.types.ndarray(ndim=2),
    tiles: I32,
):
    """Per record i = c·N + g: ``params[i]`` = (u, v, a, b, c, o) — mean2d, conic, opacity;
    ``depths[i]`` = camera z; ``radii[i]`` = ⌈half-widths⌉ (0 when culled); ``boxes[i]`` =
    inclusive pixel box (x0, y0, x1, y1); ``spans[i]`` = (s, h0, h1): in the row at
    dy = y + ½ − v the ellipse covers |x + ½ − u − s dy|² ≤ h0 − h1 dy² (padded);
    ``tiles[i]`` = tiles it touches (0 when culled).

    det Σ2 comes from :func:`_screen_covariance` (accurate for needles in float32)."""
    N = means.shape[0]
    for i in range(viewmats.shape[0] * N):
        c, g = i // N, i % N
        R, t = _view(viewmats, c)
        p = R @ _vec3(means, g) + t
        depths[i] = p[2]
        radii[i, 0], radii[i, 1], tiles[i] = 0, 0, 0
        o = opacities[g]
        if near < p[2] and p[2] < far and o >= ALPHA_MIN:
            M = _covariance(quats, scales, g)[3]
            fx, fy = Ks[c, 0, 0], Ks[c, 1, 1]
            a, b, cc, det = _screen_covariance(_jacobian(p, fx, fy) @ R @ M, eps2d)
            if det > 0:
                u = fx * p[0] / p[2] + Ks[c, 0, 2]
                v = fy * p[1] / p[2] + Ks[c, 1, 2]
                k2 = ti.max(2.0 * ti.log(255.0 * o), 0.0)
                rx, ry = ti.sqrt(k2 * a), ti.sqrt(k2 * cc)
                px = rx * (1 + BOX_PAD[0]) + BOX_PAD[1]
                py = ry * (1 + BOX_PAD[0]) + BOX_PAD[1]
                # pixel j is inside when |j + ½ − u| ≤ px; clamp before the int conversion
                x0 = ti.cast(ti.ceil(ti.max(u - px - 0.5, -1.0)), ti.i32)
                x1 = ti.cast(ti.floor(ti.min(u + px - 0.5, width * 1.0)), ti.i32)
                y0 = ti.cast(ti.ceil(ti.max(v - py - 0.5, -1.0)), ti.i32)
                y1 = ti.cast(ti.floor(ti.min(v + py - 0.5, height * 1.0)), ti.i32)
                x0, y0 = ti.max(x0, 0), ti.max(y0, 0)
                x1, y1 = ti.min(x1, width - 1), ti.min(y1, height - 1)
                if x0 <= x1 and y0 <= y1:
                    params[i, 0], params[i, 1] = u, v
                    params[i, 2], params[i, 3], params[i, 4] = cc / det, -b / det, a / det
                    params[i, 5] = o
                    radii[i, 0] = ti.cast(ti.ceil(rx), ti.i32)
                    radii[i, 1] = ti.cast(ti.ceil(ry), ti.i32)
                    boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = x0, y0, x1, y1
                    spans[i, 0] = b / cc
                    spans[i, 1] = k2 * (1 + BOX_PAD[0]) * det / cc
                    spans[i, 2] = det / (cc * cc)
                    tiles[i] = (x1 // TILE - x0 // TILE + 1) * (y1 // TILE - y0 // TILE + 1)
        if tiles[i] == 0:  # every output written: GPU backends upload no write-only array
            for k in ti.static(range(6)):
                params[i, k] = 0.0
            for k in ti.static(range(3)):
                spans[i, k] = 0.0
            boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = 0, 0, -1, -1


@ti.func
def _quat_grad(qh, G):
    """∂L/∂q̂ from the gradient G of R(q̂)."""
    w, x, y, z = qh[0], qh[1], qh[2], qh[3]
    return 2.0 * ti.Vector(
        [
            -z * G[0, 1] + y * G[0, 2] + z * G[1, 0] - x * G[1, 2] - y * G[2, 0] + x * G[2, 1],
            y * G[0, 1] + z * G[0, 2] + y * G[1, 0] - 2 * x * G[1, 1] - w * G[1, 2]
            + z * G[2, 0] + w * G[2, 1] - 2 * x * G[2, 2],
            -2 * y * G[0, 0] + x * G[0, 1] + w * G[0, 2] + x * G[1, 0] + z * G[1, 2]
            - w * G[2, 0] + z * G[2, 1] - 2 * y * G[2, 2],
            -2 * z * G[0, 0] - w * G[0, 1] + x * G[0, 2] + w * G[1, 0] - 2 * z * G[1, 1]
            + y * G[1, 2] + x * G[2, 0] + y * G[2, 1],
        ],
        float,
    )  # fmt: skip


@ti.kernel
def project_backward(
    means: ti.types.ndarray(ndim=2),
    quats: ti.types.ndarray(ndim=2),
    scales: ti.types.ndarray(ndim=2),
    viewmats: ti.types.ndarray(ndim=3),
    Ks: ti.types.ndarray(ndim=3),
    eps2d: float,
    tiles: I32,
    g_params: ti.types.ndarray(ndim=2),
    g_depths: ti.types.ndarray(ndim=1),
    g_dirs: ti.types.ndarray(ndim=2),
    with_dirs: ti.types.i32,
    g_means: ti.types.ndarray(ndim=2),
    g_quats: ti.types.ndarray(ndim=2),
    g_scales: ti.types.ndarray(ndim=2),
    g_opacities: ti.types.ndarray(ndim=1),
    g_view: ti.types.ndarray(ndim=2),
):
    """Gradients of (mean2d, conic, opacity) = g_params[i, :6], depth g_depths[i] and (when
    ``with_dirs``) the SH view direction g_dirs[i] into the Gaussians' parameters (summed
    over cameras; written, not accumulated) and the per-record camera terms g_view[i]
    (12: ∂L/∂R row-major, then ∂L/∂t), summed per camera by :func:`sum_view_grads`."""
    N = means.shape[0]
    C = viewmats.shape[0]
    for g in range(N):
        gm = ti.Vector.zero(float, 3)
        gq = ti.Vector.zero(float, 4)
        gs = ti.Vector.zero(float, 3)
        go = 0.0
        qh, qn, Rq, M, S3 = _covariance(quats, scales, g)
        mu = _vec3(means, g)
        for c in range(C):
            i = c * N + g
            GR = ti.Matrix.zero(float, 3, 3)
            gt = ti.Vector.zero(float, 3)
            R, t = _view(viewmats, c)
            if with_dirs:  # dir = μ − campos, campos = −Rᵀ t
                gd = _vec3(g_dirs, i)
                gm += gd
                GR += t.outer_product(gd)
                gt += R @ gd
            if tiles[i] > 0:
                go += g_params[i, 5]
                p = R @ mu + t
                fx, fy = Ks[c, 0, 0], Ks[c, 1, 1]
                J = _jacobian(p, fx, fy)
                Sc = R @ S3 @ R.transpose()
                a, b, cc, det = _screen_covariance(J @ R @ M, eps2d)
                conic = ti.Matrix([[cc, -b], [-b, a]], float) / det  # as in the forward
                GM = ti.Matrix(
                    [
                        [g_params[i, 2], 0.5 * g_params[i, 3]],
                        [0.5 * g_params[i, 3], g_params[i, 4]],
                    ],
                    float,
                )
                G2 = -conic @ GM @ conic
                GJ = 2.0 * G2 @ J @ Sc
                GSc = J.transpose() @ G2 @ J
                GS3 = R.transpose() @ GSc @ R
                GR += 2.0 * GSc @ R @ S3
                GMq = 2.0 * GS3 @ M
                GRq = ti.Matrix.zero(float, 3, 3)
                for r in ti.static(range(3)):
                    for k in ti.static(range(3)):
                        GRq[r, k] = GMq[r, k] * scales[g, k]
                        gs[k] += GMq[r, k] * Rq[r, k]
                gqh = _quat_grad(qh, GRq)
                gq += (gqh - gqh.dot(qh) * qh) / qn
                iz = 1.0 / p[2]
                gu, gv = g_params[i, 0], g_params[i, 1]
                gp = ti.Vector(
                    [fx * iz * gu, fy * iz * gv, -(fx * p[0] * gu + fy * p[1] * gv) * iz * iz],
                    float,
                )
                gp[2] += g_depths[i]
                gp[0] += -GJ[0, 2] * fx * iz * iz
                gp[1] += -GJ[1, 2] * fy * iz * iz
                gp[2] += (-GJ[0, 0] * fx - GJ[1, 1] * fy) * iz * iz
                gp[2] += 2.0 * (GJ[0, 2] * fx * p[0] + GJ[1, 2] * fy * p[1]) * iz * iz * iz
                gm += R.transpose() @ gp
                GR += gp.outer_product(mu)
                gt += gp
            for r in ti.static(range(3)):
                for k in ti.static(range(3)):
                    g_view[i, 3 * r + k] = GR[r, k]
                g_view[i, 9 + r] = gt[r]
        for k in ti.static(range(3)):
            g_means[g, k] = gm[k]
            g_scales[g, k] = gs[k]
        for k in ti.static(range(4)):
            g_quats[g, k] = gq[k]
        g_opacities[g] = go


@ti.kernel
def sum_view_grads(
    g_view: ti.types.ndarray(ndim=2), C: ti.i32, g_viewmats: ti.types.ndarray(ndim=3)
):
    """g_viewmats[c] (4×4; bottom row 0) = Σ_g g_view[c·N + g]."""
    N = g_view.shape[0] // C
    for c, e in ti.ndrange(C, 16):
        r, k = e // 4, e % 4
        s = 0.0
        if r < 3:
            j = 9 + r if k == 3 else 3 * r + k
            for g in range(N):
                s += g_view[c * N + g, j]
        g_viewmats[c, r, k] = s


# ------------------------------------------------------------------------ colour
@ti.kernel
def directions(
    means: ti.types.ndarray(ndim=2),
    viewmats: ti.types.ndarray(ndim=3),
    dirs: ti.types.ndarray(ndim=2),
):
    """dirs[c·N + g] = μ_g − campos_c (campos = −Rᵀ t), unnormalised."""
    N = means.shape[0]
    for i in range(viewmats.shape[0] * N):
        c, g = i // N, i % N
        R, t = _view(viewmats, c)
        d = _vec3(means, g) + R.transpose() @ t
        for k in ti.static(range(3)):
            dirs[i, k] = d[k]


@ti.kernel
def sh_forward(
    sh: ti.types.ndarray(ndim=3),
    degree: ti.i32,
    dirs: ti.types.ndarray(ndim=2),
    tiles: I32,
    feats: ti.types.ndarray(ndim=2),
):
    """feats[i, :3] = max(Σ_k b_k(normalize(dirs[i])) sh[g, k] + ½, 0) for record
    i = c·N + g (0 for culled records); ``sh`` is (N, K, 3)."""
    N = sh.shape[0]
    for i in range(dirs.shape[0]):
        g = i % N
        col = ti.Vector.zero(float, 3)
        if tiles[i] > 0:
            d = _vec3(dirs, i)
            b = _sh_basis(d / d.norm(), degree)
            for k in ti.static(range(16)):  # static: local vectors index statically
                if k < (degree + 1) * (degree + 1):
                    for ch in ti.static(range(3)):
                        col[ch] += b[k] * sh[g, k, ch]
            col = ti.max(col + 0.5, 0.0)
        for ch in ti.static(range(3)):
            feats[i, ch] = col[ch]


@ti.kernel
def sh_backward(
    sh: ti.types.ndarray(ndim=3),
    degree: ti.i32,
    dirs: ti.types.ndarray(ndim=2),
    tiles: I32,
    feats: ti.types.ndarray(ndim=2),
    g_feats: ti.types.ndarray(ndim=2),
    g_sh: ti.types.ndarray(ndim=3),
    g_dirs: ti.types.ndarray(ndim=2),
):
    """From g_feats[i, :3]: g_sh (summed over cameras, written) and g_dirs[i] (the
    gradient of the unnormalised direction); ``feats`` holds the forward's colours, whose
    clamp at 0 passes no gradient."""
    N = sh.shape[0]
    C = dirs.shape[0] // N
    for g in range(N):
        for k in range(sh.shape[1]):
            for ch in ti.static(range(3)):
                g_sh[g, k, ch] = 0.0
        for c in range(C):
            i = c * N + g
            gd = ti.Vector.zero(float, 3)
            if tiles[i] > 0:
                d = _vec3(dirs, i)
                n = d.norm()
                v = d / n
                b = _sh_basis(v, degree)
                gc = ti.Vector.zero(float, 3)
                for ch in ti.static(range(3)):
                    if feats[i, ch] > 0:
                        gc[ch] = g_feats[i, ch]
                w = ti.Vector.zero(float, 16)
                for k in ti.static(range(16)):
                    if k < (degree + 1) * (degree + 1):
                        for ch in ti.static(range(3)):
                            g_sh[g, k, ch] += b[k] * gc[ch]
                            w[k] += sh[g, k, ch] * gc[ch]
                gv = _sh_basis_grad(v, w, degree)
                gd = (gv - gv.dot(v) * v) / n
            for k in ti.static(range(3)):
                g_dirs[i, k] = gd[k]
