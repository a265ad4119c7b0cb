"""Gaussian splatting (taichi_dr.splat): images against the float64 brute-force reference
(tests/splat_reference.py) and every gradient against its float64 central differences, on
scenes built to be hard; empty and culled scenes; the screen-box bound."""

import numpy as np
import pytest
import splat_reference as ref

from taichi_dr import splat

W, H = 40, 26  # 3 × 2 tiles, a partial last row and column


def opencv_view(eye, center=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)):
    """World→camera matrix (OpenCV axes: x right, y down, z forward)."""
    eye, center, up = (np.asarray(v, float) for v in (eye, center, up))
    z = (center - eye) / np.linalg.norm(center - eye)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = R, -R @ eye
    return view


def intrinsics(f=30.0, cx=W / 2 + 0.3, cy=H / 2 - 0.2):
    return np.array([[f, 0.0, cx], [0.0, f * 1.05, cy], [0.0, 0.0, 1.0]])


def _base(rng, n, spread=0.6, scale=(-2.6, -1.6)):
    return dict(
        means=rng.uniform(-spread, spread, (n, 3)),
        quats=rng.standard_normal((n, 4)),
        scales=np.exp(rng.uniform(*scale, (n, 3))),
        opacities=rng.uniform(0.2, 0.95, n),
        colors=rng.uniform(0, 1, (n, 3)),
        viewmats=np.stack([opencv_view((0.3, -0.4, 2.5)), opencv_view((-1.6, 0.2, 1.9))]),
        Ks=np.stack([intrinsics(), intrinsics(26.0, 19.0, 14.0)]),
        backgrounds=np.array([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]]),
    )


def overlap(rng, exact_ties):
    """Twelve large overlapping Gaussians at nearly equal depths (or, for the forward
    test, pairs at exactly equal depths in both cameras: the stable order decides)."""
    s = _base(rng, 12, spread=0.25, scale=(-1.8, -1.2))
    s["viewmats"] = s["viewmats"][:1]
    s["Ks"], s["backgrounds"] = s["Ks"][:1], s["backgrounds"][:1]
    depth = s["viewmats"][0, :3, :3] @ s["means"].T + s["viewmats"][0, :3, 3:]
    target = 2.5 + (0.0 if exact_ties else 1e-3) * np.arange(12)  # nearly equal
    if exact_ties:
        target = 2.5 + 0.05 * (np.arange(12) // 2)  # equal in pairs
    s["means"] += (target - depth[2])[:, None] * s["viewmats"][0, 2, :3]
    return s


def anisotropic(rng):
    """Needles and flat discs (axis ratios up to 100), in two cameras, SH degree 3."""
    s = _base(rng, 10, spread=0.5)
    s["scales"] = np.exp(rng.uniform(-2.0, -1.0, (10, 3)))
    s["scales"][np.arange(10), rng.integers(0, 3, 10)] *= 0.01
    s["scales"][np.arange(10), rng.integers(0, 3, 10)] *= 8.0
    s["colors"] = rng.standard_normal((10, 16, 3)) * 0.4
    s["sh_degree"] = 3
    return s


def near_and_offscreen(rng):
    """Gaussians just past the near plane, behind the camera, past the far plane, and
    with their means off-screen but their tails inside; accumulated depth."""
    s = _base(rng, 12, spread=0.5)
    s["viewmats"], s["Ks"] = s["viewmats"][:1], s["Ks"][:1]
    s["backgrounds"] = s["backgrounds"][:1]
    R, t = s["viewmats"][0, :3, :3], s["viewmats"][0, :3, 3]
    cam = np.array(
        [
            [0.0, 0.0, 0.2],  # just past near = 0.15
            [0.02, -0.01, 0.16],
            [0.3, 0.1, 0.25],
            [0.0, 0.0, -0.5],  # behind
            [0.0, 0.0, 60.0],  # past far = 50
            [1.2, 0.1, 2.0],  # off-screen right, tail inside
            [-1.1, -0.9, 2.2],  # off-screen top-left
            [0.0, 0.75, 1.8],  # off-screen bottom
        ]
    )
    s["means"][:8] = (cam - t) @ R  # camera → world
    s["scales"][:3] *= 0.3
    s["scales"][5:8] *= 3.0
    s["near_plane"], s["far_plane"] = 0.15, 50.0
    s["render_mode"] = "RGB+D"
    return s


def saturated(rng):
    """Opacities at or near 1: the 0.99 clamp is active around the centres; expected
    depth."""
    s = _base(rng, 10, spread=0.5, scale=(-1.5, -1.0))
    s["opacities"] = np.array([1.0, 0.999, 1.0, 0.995, 0.98, 1.0, 0.9, 0.999, 1.0, 0.5])
    s["render_mode"] = "RGB+ED"
    return s


def transmittance_stop(rng):
    """Sixteen nearly opaque layers: where they overlap, pixels stop before the last ones."""
    s = _base(rng, 16, spread=0.3, scale=(-1.3, -0.9))
    s["opacities"] = rng.uniform(0.75, 0.97, 16)
    s["means"][:, 2] = np.linspace(-0.6, 0.6, 16) + rng.uniform(-0.01, 0.01, 16)
    return s


SCENES = {
    "overlap": lambda rng: overlap(rng, exact_ties=False),
    "anisotropic": anisotropic,
    "near_and_offscreen": near_and_offscreen,
    "saturated": saturated,
    "transmittance_stop": transmittance_stop,
}


def _settings(s):
    return dict(
        near_plane=s.get("near_plane", 0.01),
        far_plane=s.get("far_plane", 1e10),
        sh_degree=s.get("sh_degree"),
        render_mode=s.get("render_mode", "RGB"),
    )


def _render(s):
    return splat.render(
        s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"],
        s["Ks"], W, H, backgrounds=s["backgrounds"], **_settings(s),
    )  # fmt: skip


def _reference(s, stopped=False):
    """(images, alphas) of every camera; with ``stopped``: the pixels that stopped."""
    st = _settings(s)
    out = []
    for c in range(len(s["viewmats"])):
        out.append(
            ref.render(
                s["means"], s["quats"], s["scales"], s["opacities"], s["colors"],
                s["viewmats"][c], s["Ks"][c], W, H, st["near_plane"], st["far_plane"], 0.3,
                st["sh_degree"], s["backgrounds"][c], st["render_mode"], stopped,
            )
        )  # fmt: skip
    if stopped:
        return np.stack([o[2] for o in out])
    return np.stack([o[0] for o in out]), np.stack([o[1][..., None] for o in out])


@pytest.mark.parametrize("name", [*SCENES, "exact_ties"])
def test_forward_matches_float64_reference(name):
    rng = np.random.default_rng(7)
    s = overlap(rng, exact_ties=True) if name == "exact_ties" else SCENES[name](rng)
    r = _render(s)
    image, alpha = _reference(s)
    assert r.colors.shape == image.shape and r.alphas.shape == alpha.shape
    np.testing.assert_allclose(r.colors, image, rtol=0, atol=1e-9)
    np.testing.assert_allclose(r.alphas, alpha, rtol=0, atol=1e-12)
    assert alpha.max() > 0.5  # the scene is not empty
    if name == "transmittance_stop":
        assert _reference(s, stopped=True).sum() > 100  # pixels that stopped
    if name == "saturated":
        assert _clamped_pairs(r, s["opacities"]) > 10  # the 0.99 clamp is active


def _sigma(r, c, g):
    ys, xs = np.mgrid[0:H, 0:W]
    a, b, cc = r.meta["conics"][c, g]
    dx, dy = xs + 0.5 - r.meta["means2d"][c, g, 0], ys + 0.5 - r.meta["means2d"][c, g, 1]
    return 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy, dx, dy


def _clamped_pairs(r, opacities) -> int:
    """(pixel, Gaussian) pairs with o·e^{−σ} ≥ 0.99."""
    n = 0
    for c, g in zip(*np.nonzero(r.meta["radii"][..., 0])):
        n += int((opacities[g] * np.exp(-_sigma(r, c, g)[0]) >= 0.99).sum())
    return n


def test_exact_ties_keep_index_order(rng):
    """Swapping two Gaussians of equal depth changes the image: the lower index is in
    front (the reference sorts stably too, so check against a hand-made expectation)."""
    s = overlap(np.random.default_rng(7), exact_ties=True)
    first = _render(s).colors
    swapped = {k: v.copy() for k, v in s.items()}
    for k in ("means", "quats", "scales", "opacities", "colors"):
        swapped[k][[0, 1]] = s[k][[1, 0]]
    assert np.abs(_render(swapped).colors - first).max() > 1e-3


@pytest.mark.parametrize("name", SCENES)
def test_gradients_match_central_differences(name):
    rng = np.random.default_rng(11)
    s = SCENES[name](rng)
    r = _render(s)
    w = rng.standard_normal(r.colors.shape)
    wa = rng.standard_normal(r.alphas.shape)
    grads = r.backward(w, wa)

    def loss(s):
        image, alpha = _reference(s)
        return (image * w).sum() + (alpha * wa).sum()

    h = 1e-7  # 1e-6 straddles an α = 1/255 step in the anisotropic scene
    checked = 0
    for key in ("means", "quats", "scales", "opacities", "colors", "viewmats", "backgrounds"):
        x = s[key].reshape(-1)
        g = grads[key].reshape(-1)
        entries = range(x.size) if key != "viewmats" else [i for i in range(x.size) if i % 16 < 12]
        fd = np.zeros(x.size)
        for i in entries:
            keep = x[i]
            x[i] = keep + h
            up = loss(s)
            x[i] = keep - h
            down = loss(s)
            x[i] = keep
            fd[i] = (up - down) / (2 * h)
        scale = np.abs(fd).max()
        assert scale > 0, key
        err = np.abs(g - fd)
        assert err.max() <= 1e-6 * scale, (key, err.max(), scale, np.argmax(err))
        checked += len(entries)
    assert checked > 100


def test_no_gaussians_renders_the_background():
    bg = np.array([[0.2, 0.4, 0.6]])
    r = splat.render(
        np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)),
        opencv_view((0, 0, 3))[None], intrinsics()[None], W, H, backgrounds=bg,
    )  # fmt: skip
    np.testing.assert_array_equal(r.colors, np.broadcast_to(bg[:, None, None], (1, H, W, 3)))
    np.testing.assert_array_equal(r.alphas, 0)
    g = r.backward(np.ones((1, H, W, 3)))
    np.testing.assert_array_equal(g["backgrounds"], [[H * W] * 3])
    assert g["means"].shape == (0, 3)


def test_everything_behind_the_camera_renders_the_background(rng):
    s = _base(rng, 8)
    s["means"][:, 2] += 10.0  # behind the first camera (it looks towards −z)
    s["viewmats"], s["Ks"] = s["viewmats"][:1], s["Ks"][:1]
    s["backgrounds"] = s["backgrounds"][:1]
    r = _render(s)
    assert np.all(r.meta["radii"] == 0) and r.meta["flatten_ids"].size == 0
    np.testing.assert_allclose(
        r.colors, np.broadcast_to(s["backgrounds"][:, None, None], r.colors.shape)
    )
    g = r.backward(rng.standard_normal(r.colors.shape))
    for key in ("means", "quats", "scales", "opacities", "colors", "viewmats"):
        assert np.all(g[key] == 0) and np.all(np.isfinite(g[key])), key


def test_screen_box_holds_every_visible_pixel(rng):
    """Brute force per Gaussian: every pixel with α ≥ 1/255 lies inside its box."""
    s = anisotropic(rng)
    s["sh_degree"], s["colors"] = None, rng.uniform(0, 1, (10, 3))
    r = _render(s)
    for c, g in np.ndindex(2, 10):
        if r.meta["radii"][c, g, 0] == 0:
            continue
        sigma, dx, dy = _sigma(r, c, g)
        visible = s["opacities"][g] * np.exp(-sigma) >= 1 / 255
        rx, ry = r.meta["radii"][c, g]
        inside = (np.abs(dx) <= rx) & (np.abs(dy) <= ry)
        assert not np.any(visible & ~inside), (c, g)
