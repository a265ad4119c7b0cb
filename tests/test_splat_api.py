"""The splatter's fronts: gsplat's ``rasterization`` (torch.autograd.gradcheck in float64,
equal to the native render in every mode, meta, screen-space gradients), points with a
radius gradient, the ti.ad.Tape front, and bad input."""

import numpy as np
import pytest
import taichi as ti
from test_splat import H, W, _base

from taichi_dr import UserError, splat

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


def _tensors(s, keys=("means", "quats", "scales", "opacities", "colors", "viewmats")):
    return [torch.tensor(s[k], dtype=torch.float64, requires_grad=True) for k in keys]


@pytest.fixture
def scene():
    s = _base(np.random.default_rng(5), 6)
    s["sh"] = np.random.default_rng(6).standard_normal((6, 4, 3)) * 0.4
    return s


@pytest.mark.parametrize("mode, sh", [("RGB+ED", 1), ("D", None), ("RGB", None)])
def test_rasterization_gradcheck_float64(scene, mode, sh):
    if sh is not None:
        scene["colors"] = scene["sh"]
    args = _tensors(scene) + [torch.tensor(scene["backgrounds"], requires_grad=True)]
    Ks = torch.tensor(scene["Ks"])

    def f(means, quats, scales, opacities, colors, viewmats, backgrounds):
        image, alpha, _ = splat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, W, H, sh_degree=sh,
            backgrounds=backgrounds, render_mode=mode,
        )  # fmt: skip
        return image, alpha

    assert torch.autograd.gradcheck(f, tuple(args), eps=1e-7, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("mode", splat.MODES)
def test_rasterization_equals_native_render(scene, mode):
    image, alpha, meta = splat.rasterization(
        *_tensors(scene, ("means", "quats", "scales", "opacities")),
        torch.tensor(scene["sh"]), *_tensors(scene, ("viewmats",)), torch.tensor(scene["Ks"]),
        W, H, sh_degree=1, backgrounds=torch.tensor(scene["backgrounds"]), render_mode=mode,
    )  # fmt: skip
    r = splat.render(
        scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["sh"],
        scene["viewmats"], scene["Ks"], W, H, sh_degree=1, backgrounds=scene["backgrounds"],
        render_mode=mode,
    )  # fmt: skip
    np.testing.assert_allclose(image.detach().numpy(), r.colors, rtol=0, atol=1e-12)
    np.testing.assert_allclose(alpha.detach().numpy(), r.alphas, rtol=0, atol=1e-12)
    C, N = 2, 6
    assert meta["radii"].shape == (C, N, 2) and meta["radii"].dtype == torch.int32
    assert meta["means2d"].shape == (C, N, 2) and meta["conics"].shape == (C, N, 3)
    assert meta["depths"].shape == (C, N) and meta["opacities"].shape == (C, N)
    assert meta["isect_offsets"].shape == (C, meta["tile_height"], meta["tile_width"])
    assert meta["flatten_ids"].numel() == int(meta["tiles_per_gauss"].sum())
    np.testing.assert_array_equal(meta["radii"].numpy(), r.meta["radii"])


def test_float32_tensors_come_back_float32_with_screen_space_gradients(scene):
    t = [torch.tensor(scene[k], dtype=torch.float32, requires_grad=True) for k in
         ("means", "quats", "scales", "opacities", "colors")]  # fmt: skip
    view, K = torch.tensor(scene["viewmats"][:1]), torch.tensor(scene["Ks"][:1])
    image, alpha, meta = splat.rasterization(*t, view, K, W, H, packed=False)
    assert image.dtype == torch.float32 and alpha.dtype == torch.float32
    meta["means2d"].retain_grad()
    (image * torch.linspace(0, 1, 3)).sum().backward()
    assert meta["means2d"].grad.shape == (1, 6, 2) and meta["means2d"].grad.abs().sum() > 0
    assert all(x.grad is not None and x.grad.dtype == torch.float32 for x in t)


def test_points_radius_gets_a_gradient(rng):
    N = 8
    points = torch.tensor(rng.uniform(-0.4, 0.4, (N, 3)), requires_grad=True)
    colors = torch.tensor(rng.uniform(0, 1, (N, 3)), requires_grad=True)
    radii = torch.tensor(rng.uniform(0.05, 0.15, N), requires_grad=True)
    opac = torch.tensor(rng.uniform(0.3, 0.9, N), requires_grad=True)
    s = _base(rng, 1)
    view, K = torch.tensor(s["viewmats"][:1]), torch.tensor(s["Ks"][:1])

    def f(points, colors, radii, opac):
        return splat.rasterize_points(points, colors, radii, view, K, W, H, opacities=opac)[0]

    assert torch.autograd.gradcheck(
        f, (points, colors, radii, opac), eps=1e-7, atol=1e-6, fast_mode=True
    )
    f(points, colors, radii, opac).sum().backward()
    assert radii.grad.abs().min() > 0  # every point's size matters
    r = splat.render_points(
        points.detach().numpy(), colors.detach().numpy(), radii.detach().numpy(),
        s["viewmats"][:1], s["Ks"][:1], W, H, opacities=opac.detach().numpy(),
    )  # fmt: skip
    np.testing.assert_allclose(r.backward(np.ones((1, H, W, 3)))["radii"], radii.grad.numpy())


def test_tape_front_accumulates_into_ndarray_grads(scene):
    s = {k: scene[k][: (1 if k in ("viewmats", "Ks") else None)] for k in scene}
    arrays = {}
    for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"):
        a = ti.ndarray(ti.f64, s[k].shape, needs_grad=k != "Ks")
        a.from_numpy(s[k])
        arrays[k] = a
    image = ti.ndarray(ti.f64, (1, H, W, 3), needs_grad=True)
    alpha = ti.ndarray(ti.f64, (1, H, W, 1), needs_grad=True)
    loss = ti.ndarray(ti.f64, (), needs_grad=True)

    @ti.kernel
    def weighted(image: ti.types.ndarray(), alpha: ti.types.ndarray(), loss: ti.types.ndarray()):
        for y, x in ti.ndrange(H, W):
            loss[None] += image[0, y, x, 1] * (x + 1) + alpha[0, y, x, 0] * y

    splatter = splat.Splatter(W, H)
    with ti.ad.Tape(loss=loss):
        splatter.render(*arrays.values(), image, alpha)
        weighted(image, alpha, loss)
    r = splat.render(*(s[k] for k in arrays), W, H)
    w = np.zeros((1, H, W, 3))
    w[..., 1] = np.arange(1, W + 1)
    expected = r.backward(w, np.broadcast_to(np.arange(H)[None, :, None, None], (1, H, W, 1)))
    for k in ("means", "quats", "scales", "opacities", "colors", "viewmats"):
        np.testing.assert_allclose(arrays[k].grad.to_numpy(), expected[k], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(image.to_numpy(), r.colors)


def _good(rng):
    s = _base(rng, 4)
    return [s[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]


def _bad(index, value):
    def edit(args):
        args[index] = value(args[index])
        return args

    return edit


BAD = [
    (_bad(1, lambda q: np.vstack([q[:3], np.zeros((1, 4))])), {}, "zero length"),
    (_bad(2, lambda s: -s), {}, "scales must be > 0"),
    (_bad(2, lambda s: np.vstack([s[:3], [[0.1, 0.0, 0.1]]])), {}, "scales must be > 0"),
    (_bad(3, lambda o: o + 1.0), {}, r"opacities must lie in \[0, 1\]"),
    (_bad(0, lambda m: np.where(m == m.max(), np.nan, m)), {}, "NaN or inf"),
    (_bad(4, lambda c: np.where(c == c.max(), np.inf, c)), {}, "colors contain NaN"),
    (_bad(5, lambda v: np.where(v == 1.0, np.nan, v)), {}, "viewmats or Ks contain NaN"),
    (_bad(4, lambda c: np.zeros((4, 5, 3))), {"sh_degree": 1}, "K in 1, 4, 9, 16"),
    (_bad(4, lambda c: np.zeros((4, 4, 3))), {"sh_degree": 2}, "needs 9 SH coefficients"),
    (_bad(3, lambda o: o[:3]), {}, r"opacities must have shape \(N,\)"),
    (_bad(1, lambda q: q[:3]), {}, r"quats must have shape \(N, 4\)"),
    (_bad(4, lambda c: c[:2]), {}, "colors must have shape"),
    (_bad(6, lambda K: K[:1]), {}, r"Ks must have shape \(C, 3, 3\)"),
    (_bad(6, lambda K: K * [[1, 1, 1], [1, 1, 1], [0, 0, 2]]), {}, "pinhole"),
    (lambda a: a, {"render_mode": "RGBD"}, "unknown render_mode"),
    (lambda a: a, {"near_plane": 0.0}, "near_plane"),
    (lambda a: a, {"sh_degree": 4}, "sh_degree must be"),
    (lambda a: a, {"backgrounds": np.zeros((2, 4))}, "backgrounds must have shape"),
]


@pytest.mark.parametrize("edit, kwargs, match", BAD)
def test_bad_input_one_line_errors(edit, kwargs, match, rng):
    args = edit(_good(rng))
    with pytest.raises(UserError, match=match) as info:
        splat.render(*args, W, H, **kwargs)
    assert "\n" not in str(info.value)
    kwargs = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with pytest.raises(UserError, match=match):
        splat.rasterization(*(torch.tensor(a) for a in args), W, H, **kwargs)


def test_unsupported_gsplat_options(rng):
    args = [torch.tensor(a) for a in _good(rng)]
    with pytest.raises(UserError, match="absgrad=True is not supported"):
        splat.rasterization(*args, W, H, absgrad=True)
    with pytest.raises(UserError, match="unknown option"):
        splat.rasterization(*args, W, H, antialias=1)
    with pytest.raises(UserError, match="tile_size"):
        splat.rasterization(*args, W, H, tile_size=8)
