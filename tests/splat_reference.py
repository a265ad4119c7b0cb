"""Float64 NumPy brute-force Gaussian splatting, written from the documented model only:
every Gaussian against every pixel, no tiles, no screen boxes, no culling but near/far;
only the documented thresholds (σ < 0, α < 1/255, T_next ≤ 1e-4, α ≤ 0.99)."""

import numpy as np

SH = [
    lambda x, y, z: 0.28209479177387814 + 0 * x,
    lambda x, y, z: -0.4886025119029199 * y,
    lambda x, y, z: 0.4886025119029199 * z,
    lambda x, y, z: -0.4886025119029199 * x,
    lambda x, y, z: 1.0925484305920792 * x * y,
    lambda x, y, z: -1.0925484305920792 * y * z,
    lambda x, y, z: 0.31539156525252005 * (2 * z * z - x * x - y * y),
    lambda x, y, z: -1.0925484305920792 * x * z,
    lambda x, y, z: 0.5462742152960396 * (x * x - y * y),
    lambda x, y, z: -0.5900435899266435 * y * (3 * x * x - y * y),
    lambda x, y, z: 2.890611442640554 * x * y * z,
    lambda x, y, z: -0.4570457994644658 * y * (4 * z * z - x * x - y * y),
    lambda x, y, z: 0.3731763325901154 * z * (2 * z * z - 3 * x * x - 3 * y * y),
    lambda x, y, z: -0.4570457994644658 * x * (4 * z * z - x * x - y * y),
    lambda x, y, z: 1.445305721320277 * z * (x * x - y * y),
    lambda x, y, z: -0.5900435899266435 * x * (x * x - 3 * y * y),
]


def rotation(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def sh_colors(sh, degree, means, campos):
    d = means - campos
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    basis = np.stack([f(*d.T) for f in SH[: (degree + 1) ** 2]], axis=1)  # (N, K)
    return np.maximum(np.einsum("nk,nkc->nc", basis, sh[:, : (degree + 1) ** 2]) + 0.5, 0.0)


def render(
    means, quats, scales, opacities, colors, viewmat, K, width, height, near=0.01, far=1e10,
    eps2d=0.3, sh_degree=None, background=None, mode="RGB", stopped=False,
):  # fmt: skip
    """One camera: (image (H, W, X), alpha (H, W)) as in gsplat's render modes; with
    ``stopped`` also the mask (H, W) of pixels whose transmittance reached the stop."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t
    if sh_degree is not None:
        colors = sh_colors(colors, sh_degree, means, -R.T @ t)
    feats = []
    if mode in ("RGB", "RGB+D", "RGB+ED"):
        feats.append(colors)
    if "D" in mode:
        feats.append(p[:, 2:3])
    feats = np.concatenate(feats, axis=1)
    D = feats.shape[1]
    bg = np.zeros(D)
    if background is not None and mode.startswith("RGB"):
        bg[: colors.shape[1]] = background
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ys, xs = np.mgrid[0:height, 0:width]
    pix = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    T = np.ones(len(pix))
    out = np.zeros((len(pix), D))
    done = np.zeros(len(pix), bool)
    keep = np.flatnonzero((p[:, 2] > near) & (p[:, 2] < far))
    for g in keep[np.argsort(p[keep, 2], kind="stable")]:
        x, y, z = p[g]
        Rq = rotation(quats[g])
        S3 = Rq @ np.diag(scales[g] ** 2) @ Rq.T
        J = np.array([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]])
        S2 = J @ R @ S3 @ R.T @ J.T + eps2d * np.eye(2)
        conic = np.linalg.inv(S2)
        d = pix - np.array([fx * x / z + cx, fy * y / z + cy])
        sigma = 0.5 * np.einsum("pi,ij,pj->p", d, conic, d)
        alpha = np.minimum(0.99, opacities[g] * np.exp(-sigma))
        valid = (sigma >= 0) & (alpha >= 1 / 255) & ~done
        t_next = T * (1 - alpha)
        stop = valid & (t_next <= 1e-4)
        done |= stop
        add = valid & ~stop
        out[add] += (alpha * T)[add, None] * feats[g]
        T = np.where(add, t_next, T)
    out += T[:, None] * bg
    alpha = 1 - T
    if mode.endswith("ED"):
        out[:, -1] /= np.maximum(alpha, 1e-10)
    result = out.reshape(height, width, D), alpha.reshape(height, width)
    return (*result, done.reshape(height, width)) if stopped else result
