"""Soft rasterizer: forward against a brute-force float64 NumPy reference over all faces,
float64 central-difference gradchecks, K truncation, degenerate faces, bad input."""

import numpy as np
import pytest
import taichi as ti

import taichi_dr
from taichi_dr.camera import Camera
from taichi_dr.errors import UserError
from taichi_dr.render.mesh import MeshBuffers
from taichi_dr.render.soft import SoftRasterizer
from taichi_dr.render.vertex import VertexStage


def soft_reference(clip, faces, colors, W, H, sigma, gamma, eps, near, far, bg, K=None, r2=None):
    """Float64 brute force over every face (no binning); with ``K``/``r2`` it keeps, per
    pixel, the K faces nearest in depth among those inside or within squared distance r2."""
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
        ha = c[None, :, 0] - P[:, :1] * c[None, :, 3]
        hb = c[None, :, 1] - P[:, 1:] * c[None, :, 3]
        u = np.cross(ha, hb)
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
    for i in range(n):
        chosen = sorted(terms[i], key=lambda t: (t[0], t[1]))[:K]
        zn = [(far - t[0]) / (far - near) for t in chosen]
        zm = max([eps] + zn)
        wsum, csum, log_t = np.exp((eps - zm) / gamma), np.exp((eps - zm) / gamma) * bg, 0.0
        for (z, f, d2, inside, lam), zni in zip(chosen, zn):
            D = 1 / (1 + np.exp(-(d2 if inside else -d2) / sigma))
            log_t += np.log1p(-D)
            w = D * np.exp((zni - zm) / gamma)
            wsum += w
            csum = csum + w * (lam @ colors[faces[f]])
        sil[i] = 1 - np.exp(log_t)
        img[i] = csum / wsum
    return sil.reshape(H, W), img.reshape(H, W, 3)
