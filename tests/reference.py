"""Slow, independent float64 NumPy references for the pipeline's stages (tests only).

The rasterizer reference implements the documented rules from scratch: near-plane
clipping (intersections computed from the lower vertex index), snapping to 1/256 pixel,
exact integer edge functions at pixel centres with the top-left rule, the nearest depth
winning and ties going to the lower face id. The soft rasterizer reference sums the
documented Soft Rasterizer formulas over every face (no binning).
"""

import math

import numpy as np

SUB = 256


def _snap(p, W, H):
    x = (p[0] / p[3] * 0.5 + 0.5) * W * SUB
    y = (0.5 - p[1] / p[3] * 0.5) * H * SUB
    return int(np.floor(x + 0.5)), int(np.floor(y + 0.5))


def _clip_near(v, idx):
    """Polygon (list of 4-vectors) of triangle v (3, 4) clipped to z + w >= 0."""
    out = []
    d = v[:, 2] + v[:, 3]
    for k in range(3):
        a, b = k, (k + 1) % 3
        if d[a] >= 0:
            out.append(v[a])
        if (d[a] >= 0) != (d[b] >= 0):
            p, q = (a, b) if idx[a] < idx[b] else (b, a)
            dp, dq = d[p], d[q]
            out.append(v[p] + (v[q] - v[p]) * (dp / (dp - dq)))
    return out


def rasterize(clip, faces, W, H, cull="none"):
    """Returns (triangle_id (H, W) int32, coverage count (H, W) int32, depth_ndc (H, W))."""
    clip = np.asarray(clip, dtype=np.float64)
    tid = np.full((H, W), -1, np.int32)
    zbuf = np.full((H, W), np.inf)
    count = np.zeros((H, W), np.int32)
    cx = np.arange(W) * SUB + SUB // 2
    cy = np.arange(H) * SUB + SUB // 2
    for f, idx in enumerate(faces):
        poly = _clip_near(clip[idx], idx)
        if len(poly) < 3:
            continue
        s = [_snap(p, W, H) for p in poly]
        n = len(s)
        area = sum(s[i][0] * s[(i + 1) % n][1] - s[(i + 1) % n][0] * s[i][1] for i in range(n))
        if area == 0 or (cull == "back" and area > 0) or (cull == "front" and area < 0):
            continue
        if area < 0:
            s = [s[0]] + s[1:][::-1]
        xs, ys = [q[0] for q in s], [q[1] for q in s]
        cols = np.nonzero((cx >= min(xs)) & (cx <= max(xs)))[0]
        rows = np.nonzero((cy >= min(ys)) & (cy <= max(ys)))[0]
        if len(cols) == 0 or len(rows) == 0:
            continue
        X = cx[cols][None, :].astype(object)
        Y = cy[rows][:, None].astype(object)
        inside = np.ones((len(rows), len(cols)), bool)
        for i in range(n):
            (ax, ay), (bx, by) = s[i], s[(i + 1) % n]
            dx, dy = bx - ax, by - ay
            e = dx * (Y - ay) - dy * (X - ax)
            owns = dy < 0 or (dy == 0 and dx > 0)
            inside &= (e > 0) | ((e == 0) & owns)
        # depth: NDC z of the plane through the first three (unsnapped) polygon vertices
        q = [
            ((p[0] / p[3] * 0.5 + 0.5) * W, (0.5 - p[1] / p[3] * 0.5) * H, p[2] / p[3])
            for p in poly[:3]
        ]
        A = np.array([[q[i][0], q[i][1], 1.0] for i in range(3)])
        coef = np.linalg.lstsq(A, np.array([q[i][2] for i in range(3)]), rcond=None)[0]
        px = cols[None, :] + 0.5
        py = rows[:, None] + 0.5
        z = coef[0] * px + coef[1] * py + coef[2] + 0 * inside
        ok = inside & (z <= 1.0)
        rr, cc = np.nonzero(ok)
        for r, c in zip(rows[rr], cols[cc]):
            count[r, c] += 1
        zz = z[ok]
        for r, c, zv in zip(rows[rr], cols[cc], zz):
            if zv < zbuf[r, c]:
                zbuf[r, c] = zv
                tid[r, c] = f
    return tid, count, zbuf


def mip_pyramid(img):
    """The box-filtered mip levels of (h, w, 3) ``img`` down to 1×1 (a side already 1 is
    repeated)."""
    levels = [np.asarray(img, dtype=np.float64)]
    while max(levels[-1].shape[:2]) > 1:
        a = levels[-1]
        if a.shape[0] == 1:
            a = np.concatenate([a, a])
        if a.shape[1] == 1:
            a = np.concatenate([a, a], 1)
        levels.append(0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]))
    return levels


def sample_texture(img, uv, mode, wrap, footprint=0.0):
    """Colour of texture ``img`` (h, w, 3), row 0 at the top, at ``uv`` (OpenGL: v up)
    with filter ``mode`` (nearest, bilinear, trilinear by ``footprint``) and ``wrap``."""

    def texel(level, y, x):
        h, w = level.shape[:2]
        if wrap == "repeat":
            return level[y % h, x % w]
        return level[min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    def bilinear(level, uv):
        h, w = level.shape[:2]
        tx, ty = uv[0] * w - 0.5, (1 - uv[1]) * h - 0.5
        x0, y0 = math.floor(tx), math.floor(ty)
        fx, fy = tx - x0, ty - y0
        return (1 - fy) * ((1 - fx) * texel(level, y0, x0) + fx * texel(level, y0, x0 + 1)) + fy * (
            (1 - fx) * texel(level, y0 + 1, x0) + fx * texel(level, y0 + 1, x0 + 1)
        )

    if mode == "nearest":
        h, w = img.shape[:2]
        return texel(img, math.floor((1 - uv[1]) * h), math.floor(uv[0] * w))
    if mode == "bilinear":
        return bilinear(img, uv)
    levels = mip_pyramid(img)
    lod = min(math.log2(max(footprint * max(img.shape[:2]), 1.0)), len(levels) - 1)
    l0 = math.floor(lod)
    l1 = min(l0 + 1, len(levels) - 1)
    t = lod - l0
    return (1 - t) * bilinear(levels[l0], uv) + t * bilinear(levels[l1], uv)


def soft_reference(
    clip, faces, colors, W, H, sigma, gamma, eps, near, far, bg, K=None, r2=None, candidates=False,
    depths=False,
):  # fmt: skip
    """Float64 brute force over every face (no binning), written from the documented
    formulas: keeps, per pixel, the K faces nearest in depth (ties: lower face id) among
    those inside or within squared distance r2. Returns (silhouette, image, count), and
    with ``candidates`` each pixel's set of kept face ids (a list, row-major), with
    ``depths`` each pixel's (depth, face id) of every face within reach, sorted."""
    m = min(W, H)
    sx, sy = W / m, H / m
    xs = (np.arange(W) + 0.5) / W * 2 - 1
    ys = 1 - (np.arange(H) + 0.5) / H * 2
    P = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)  # (H·W, 2) NDC, row-major
    Q = P * [sx, sy]
    per_face = []
    for f, idx in enumerate(faces):
        c = clip[idx]
        if np.any(c[:, 3] <= 0) or np.any(c[:, 2] < -c[:, 3]) or np.all(c[:, 2] > c[:, 3]):
            continue
        s = c[:, :2] / c[:, 3:] * [sx, sy]
        d2 = np.full(len(Q), np.inf)
        cross = []
        for k in range(3):
            a, e = s[k], s[(k + 1) % 3] - s[k]
            ee = e @ e
            t = np.clip((Q - a) @ e / ee, 0, 1) if ee > 0 else np.zeros(len(Q))
            r = Q - a - t[:, None] * e
            d2 = np.minimum(d2, (r**2).sum(1))
            cross.append(e[0] * (Q[:, 1] - a[1]) - e[1] * (Q[:, 0] - a[0]))
        cross = np.stack(cross, 1)
        inside = np.all(cross > 0, 1) | np.all(cross < 0, 1)
        # homogeneous barycentrics u = a × b, a_v = x_v − p_x w_v, b_v = y_v − p_y w_v,
        # expanded as u_v = A_v + B_v p_x + C_v p_y (the p_x p_y terms cancel)
        i, j = [1, 2, 0], [2, 0, 1]
        A = c[i, 0] * c[j, 1] - c[j, 0] * c[i, 1]
        B = c[j, 3] * c[i, 1] - c[i, 3] * c[j, 1]
        C = c[j, 0] * c[i, 3] - c[i, 0] * c[j, 3]
        u = A + P[:, :1] * B + P[:, 1:] * C
        u = np.where(u.sum(1, keepdims=True) < 0, -u, u).clip(0)
        tot = u.sum(1, keepdims=True)
        lam = np.where(tot > 0, u / np.where(tot > 0, tot, 1), 1 / 3)
        z = lam @ c[:, 3]
        per_face.append((f, d2, inside, lam, z))
    n = len(Q)
    log_t = np.zeros(n)
    terms = [[] for _ in range(n)]
    for f, d2, inside, lam, z in per_face:
        for i in range(n):
            if r2 is not None and not (inside[i] or d2[i] <= r2):
                continue
            terms[i].append((z[i], f, d2[i], inside[i], lam[i]))
    sil = np.zeros(n)
    img = np.zeros((n, 3))
    count = np.zeros(n, np.int32)
    kept = []
    for i in range(n):
        chosen = sorted(terms[i], key=lambda t: (t[0], t[1]))[:K]
        count[i] = len(chosen)
        kept.append({t[1] for t in chosen})
        zn = [(far - t[0]) / (far - near) for t in chosen]
        zm = max([eps] + zn)
        wsum, csum, log_t = np.exp((eps - zm) / gamma), np.exp((eps - zm) / gamma) * bg, 0.0
        for (_, f, d2, inside, lam), zni in zip(chosen, zn):
            s = (d2 if inside else -d2) / sigma
            D = 0.5 * (1 + np.tanh(s / 2))  # sigmoid without overflow
            log_t -= np.logaddexp(0, s)  # log(1 − D)
            w = D * np.exp((zni - zm) / gamma)
            wsum += w
            csum = csum + w * (lam @ colors[faces[f]])
        sil[i] = 1 - np.exp(log_t)
        img[i] = csum / wsum
    out = sil.reshape(H, W), img.reshape(H, W, 3), count.reshape(H, W)
    out = (*out, kept) if candidates else out
    return (*out, [sorted(t[:2] for t in ts) for ts in terms]) if depths else out


def soft_corner_cases(rng):
    """Clip-space faces that exercise the corner cases: ordinary, overlapping at several
    depths, zero-area (a repeated vertex, collinear), edge-on, crossing the near plane
    (not drawn), beyond the far plane (not drawn)."""

    def tri(pts):
        return [np.array([x, y, z, w]) for x, y, z, w in pts]

    verts = []
    verts += tri([(-0.6, -0.5, 0.2, 1.0), (0.5, -0.4, 0.3, 1.2), (0.0, 0.6, 0.1, 0.9)])
    verts += tri([(-0.2, -0.8, 0.5, 2.0), (0.9, 0.1, 0.6, 2.2), (-0.5, 0.7, 0.4, 1.8)])
    verts += tri([(0.1, 0.1, 0.2, 1.0), (0.1, 0.1, 0.2, 1.0), (0.4, -0.2, 0.3, 1.1)])
    verts += tri([(-0.8, -0.8, 0.2, 1.0), (-0.4, -0.4, 0.2, 1.0), (0.0, 0.0, 0.2, 1.0)])
    verts += tri([(0.3, 0.5, 0.1, 1.0), (0.6, 0.8, 0.3, 2.0), (0.3, 0.5, 0.5, 1.0)])  # edge-on
    verts += tri([(-0.3, 0.2, -2.0, 1.0), (0.3, 0.2, 0.5, 1.0), (0.0, 0.6, 0.5, 1.0)])
    verts += tri([(-0.3, -0.2, 3.0, 1.0), (0.3, -0.2, 3.0, 1.0), (0.0, 0.3, 3.0, 1.0)])
    clip = np.array(verts)
    faces = np.arange(len(clip), dtype=np.int32).reshape(-1, 3)
    return clip, faces, rng.random((len(clip), 3))
