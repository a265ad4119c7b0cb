"""``taichi_dr.nvdiffrast.texture``: every filter and boundary mode, mip levels from uv_da
and biases, max_mip_level, user mip lists and reusable stacks, cube maps and their seams —
against a float64 NumPy sampler written here from the documented rules — and
``torch.autograd.gradcheck`` of every gradient (tex, uv, uv_da, mip_level_bias, mip lists)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; pip install 'taichi-dr[torch]' to run these"
)
from conftest import project  # noqa: E402

import taichi_dr.nvdiffrast as dr  # noqa: E402

B, H, W = 2, 3, 4  # pixels per test: tiny, the reference loops in Python


# --------------------------------------------------------------------------- reference


def cube_face(d):
    """(face, s, t) of direction d by OpenGL's table (major axis; ties to z, then y)."""
    x, y, z = d
    if abs(z) >= abs(x) and abs(z) >= abs(y):
        face = 4 if z >= 0 else 5
    elif abs(y) >= abs(x):
        face = 2 if y >= 0 else 3
    else:
        face = 0 if x >= 0 else 1
    sc, tc, ma = {
        0: (-z, -y, x),
        1: (z, -y, -x),
        2: (x, z, y),
        3: (x, -z, -y),
        4: (x, -y, z),
        5: (-x, -y, -z),
    }[face]
    return face, (sc / ma + 1) / 2, (tc / ma + 1) / 2


def cube_direction(face, s, t):
    """The inverse of ``cube_face`` on the face (|major axis| = 1)."""
    sc, tc = 2 * s - 1, 2 * t - 1
    return {
        0: (1, -tc, -sc),
        1: (-1, -tc, sc),
        2: (sc, 1, tc),
        3: (sc, -1, -tc),
        4: (sc, -tc, 1),
        5: (-sc, -tc, -1),
    }[face]


def texel(level, face, y, x, boundary):
    """level (F, h, w, C) at an integer texel, or None for a cube corner outside."""
    h, w = level.shape[1:3]
    if boundary == "wrap":
        return level[face, y % h, x % w]
    if boundary == "clamp":
        return level[face, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
    inside_x, inside_y = 0 <= x < w, 0 <= y < h
    if boundary == "zero":
        return level[face, y, x] if inside_x and inside_y else 0 * level[0, 0, 0]
    if not inside_x and not inside_y:
        return None
    if inside_x and inside_y:
        return level[face, y, x]
    f2, s2, t2 = cube_face(cube_direction(face, (x + 0.5) / w, (y + 0.5) / h))
    return level[f2, min(int(t2 * h), h - 1), min(int(s2 * w), w - 1)]


def bilinear(level, face, s, t, boundary):
    h, w = level.shape[1:3]
    if boundary == "wrap":
        s, t = s % 1.0, t % 1.0
    x, y = s * w - 0.5, t * h - 0.5
    if boundary == "clamp":
        x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    taps = [
        (
            texel(level, face, y0 + j, x0 + i, boundary),
            (fx if i else 1 - fx) * (fy if j else 1 - fy),
        )
        for j in (0, 1)
        for i in (0, 1)
    ]
    corner = [v for v, _ in taps if v is not None]
    fill = sum(corner) / 3 if len(corner) == 3 else None  # a cube corner: mean of the three
    return sum((fill if v is None else v) * wt for v, wt in taps)


def levels_of(image, count):
    """Levels 0..count−1 of one image (F, h, w, C): 2×2 box averages (2×1, 1×2 once a side
    is 1)."""
    levels = [image]
    for _ in range(count - 1):
        a = levels[-1]
        a = np.concatenate([a, a], 1) if a.shape[1] == 1 else a
        a = np.concatenate([a, a], 2) if a.shape[2] == 1 else a
        levels.append(
            0.25 * (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2])
        )
    return levels


def ref_texture(tex, uv, uv_da, bias, filter_mode, boundary, max_mip_level=None, mips=None):
    """The documented sampler, pixel by pixel, in float64."""
    tex = np.asarray(tex, np.float64)
    cube = boundary == "cube"
    if not cube:  # one face
        tex = tex[:, None]
        mips = None if mips is None else [m[:, None] for m in mips]
    h, w = tex.shape[2:4]
    top = int(math.log2(max(h, w)))
    if max_mip_level is not None:
        top = min(top, max_mip_level)
    out = np.zeros((*uv.shape[:3], tex.shape[-1]))
    for b, r, c in np.ndindex(*uv.shape[:3]):
        if mips is None:
            mipmapped = filter_mode.startswith("linear-mipmap")
            image_levels = levels_of(tex[b % len(tex)], top + 1 if mipmapped else 1)
        else:
            image_levels = [tex[b % len(tex)]] + [m[b % len(m)] for m in mips]
            top = len(mips)
        q = uv[b, r, c]
        if cube:
            if not np.any(q):
                continue
            face, s, t = cube_face(q)
        else:
            face, (s, t) = 0, q
        if filter_mode == "nearest":
            if boundary == "wrap":
                s, t = s % 1.0, t % 1.0
            x, y = math.floor(s * w), math.floor(t * h)
            if boundary == "zero" and not (0 <= x < w and 0 <= y < h):
                continue
            out[b, r, c] = tex[b % len(tex), face, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
            continue
        lod = 0.0
        if filter_mode.startswith("linear-mipmap"):
            if uv_da is not None:
                J = jacobian(q, uv_da[b, r, c], cube, h, w)
                lod = math.log2(np.linalg.svd(J)[1][0])
            lod = lod + (0.0 if bias is None else bias[b, r, c])
            lod = min(max(lod, 0.0), top)
        k0 = math.floor(lod)
        frac = lod - k0 if filter_mode == "linear-mipmap-linear" else 0.0
        value = (1 - frac) * bilinear(image_levels[k0], face, s, t, boundary)
        if frac > 0:
            value = value + frac * bilinear(image_levels[k0 + 1], face, s, t, boundary)
        out[b, r, c] = value
    return out


def jacobian(q, da, cube, h, w):
    """Texel-space Jacobian of (s, t) by (X, Y): directly for 2D, by central differences of
    the cube-face coordinates for cube maps."""
    if not cube:
        return np.array([[da[0] * w, da[1] * w], [da[2] * h, da[3] * h]])
    J = np.zeros((2, 2))
    eps = 1e-6
    for k in range(2):
        step = np.array([da[k], da[2 + k], da[4 + k]]) * eps
        hi, lo = cube_face(q + step), cube_face(q - step)
        J[:, k] = [(hi[1] - lo[1]) / (2 * eps) * w, (hi[2] - lo[2]) / (2 * eps) * h]
    return J


# --------------------------------------------------------------------------- tests


def random_uv(rng, lo=-0.3, hi=1.3):
    return torch.tensor(rng.uniform(lo, hi, (B, H, W, 2)))


def random_directions(rng, special=True):
    d = rng.normal(size=(B, H, W, 3))
    if not special:
        return torch.tensor(d)
    d[0, 0, 0] = (1, 1, 1)  # a corner
    d[0, 0, 1] = (0.5, -0.5, 0.2)  # a tie: y face
    d[0, 0, 2] = (0, 0, 0)  # invalid: 0
    d[0, 0, 3] = (1e-3, 2.0, -2.0)  # y–z edge
    return torch.tensor(d)


@pytest.mark.parametrize("filter_mode", ["nearest", "linear"])
@pytest.mark.parametrize("boundary", ["wrap", "clamp", "zero"])
def test_2d_filters_and_boundaries(rng, filter_mode, boundary):
    for images in (1, B):  # one texture for every image, or one each
        tex = torch.tensor(rng.uniform(0, 1, (images, 5, 6, 2)))  # non-square, C = 2
        uv = random_uv(rng)
        out = dr.texture(tex, uv, filter_mode=filter_mode, boundary_mode=boundary)
        ref = ref_texture(tex.numpy(), uv.numpy(), None, None, filter_mode, boundary)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("filter_mode", ["linear-mipmap-nearest", "linear-mipmap-linear"])
def test_2d_mipmaps(rng, filter_mode):
    tex = torch.tensor(rng.uniform(0, 1, (B, 8, 16, 3)))
    uv = random_uv(rng, 0, 1)
    uv_da = torch.tensor(rng.normal(0, 0.15, (B, H, W, 4)))
    bias = torch.tensor(rng.uniform(-1, 2, (B, H, W)))
    cases = ((uv_da, None, None), (None, bias, None), (uv_da, bias, None), (uv_da, bias, 2))
    for da, bi, top in cases:
        out = dr.texture(tex, uv, da, bi, filter_mode=filter_mode, max_mip_level=top)
        d = None if da is None else da.numpy()
        b = None if bi is None else bi.numpy()
        ref = ref_texture(tex.numpy(), uv.numpy(), d, b, filter_mode, "wrap", top)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    # 'auto' picks linear-mipmap-linear with uv_da; max_mip_level=0 means linear
    auto = dr.texture(tex, uv, uv_da)
    lml = ref_texture(tex.numpy(), uv.numpy(), uv_da.numpy(), None, "linear-mipmap-linear", "wrap")
    np.testing.assert_allclose(auto.numpy(), lml, atol=1e-12)
    flat = dr.texture(tex, uv, uv_da, filter_mode=filter_mode, max_mip_level=0)
    assert torch.equal(flat, dr.texture(tex, uv))


def test_odd_sizes_user_mips_and_reused_stacks(rng):
    tex = torch.tensor(rng.uniform(0, 1, (1, 12, 6, 2)), requires_grad=True)
    uv = random_uv(rng, 0, 1)
    bias = torch.tensor(rng.uniform(0, 1.5, (B, H, W)))
    with pytest.raises(dr.NvdiffrastError, match="max_mip_level=1"):
        dr.texture(tex, uv, mip_level_bias=bias)
    out = dr.texture(tex, uv, mip_level_bias=bias, max_mip_level=1)
    lml = "linear-mipmap-linear"
    ref = ref_texture(tex.detach().numpy(), uv.numpy(), None, bias.numpy(), lml, "wrap", 1)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-12)
    # a reusable stack gives the same values and the same gradient to tex
    mip = dr.texture_construct_mip(tex, max_mip_level=1)
    again = dr.texture(tex, uv, mip_level_bias=bias, mip=mip)
    assert torch.equal(out, again)
    g1 = torch.autograd.grad(out.pow(2).sum(), tex)[0]
    g2 = torch.autograd.grad(again.pow(2).sum(), tex)[0]
    torch.testing.assert_close(g1, g2)
    # a user list of levels: sampled as given, gradients to the list, not through it to tex
    level1 = torch.tensor(rng.uniform(0, 1, (1, 6, 3, 2)), requires_grad=True)
    user = dr.texture(tex, uv, mip_level_bias=bias, mip=[level1])
    levels = [level1.detach().numpy()]
    ref = ref_texture(
        tex.detach().numpy(), uv.numpy(), None, bias.numpy(), lml, "wrap", mips=levels
    )
    np.testing.assert_allclose(user.detach().numpy(), ref, atol=1e-12)
    g_tex, g_level = torch.autograd.grad(user.sum(), (tex, level1))
    base = dr.texture(tex, uv, mip_level_bias=bias * 0 - 5, mip=[level1])  # level 0 only
    assert g_level.abs().sum() > 0 and g_tex.sum() < torch.autograd.grad(base.sum(), tex)[0].sum()


@pytest.mark.parametrize("filter_mode", ["nearest", "linear", "linear-mipmap-linear"])
def test_cube_maps(rng, filter_mode):
    tex = torch.tensor(rng.uniform(0, 1, (B, 6, 4, 4, 3)))
    mipmapped = filter_mode.startswith("linear-mipmap")
    uv = random_directions(rng, special=not mipmapped)  # the reference's J: off the edges
    uv_da = torch.tensor(rng.normal(0, 0.3, (B, H, W, 6)))
    da = uv_da if mipmapped else None
    out = dr.texture(tex, uv, da, filter_mode=filter_mode, boundary_mode="cube")
    d = None if da is None else da.numpy()
    ref = ref_texture(tex.numpy(), uv.numpy(), d, None, filter_mode, "cube")
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9)
    assert mipmapped or (out[0, 0, 2] == 0).all()  # the zero direction


def test_cube_seams_are_continuous(rng):
    """Bilinear and mipmapped lookups on either side of a face edge, and near a corner from
    each of its three faces, agree (the taps cross onto the neighbouring faces)."""
    tex = torch.tensor(rng.uniform(0, 1, (1, 6, 4, 4, 2)))
    e = 1e-9
    edges = [  # a point on each of the 12 edges, nudged onto both faces
        (a * np.eye(3)[i] + b * np.eye(3)[j] + 0.37 * np.eye(3)[k])
        for i, j, k in ((0, 1, 2), (0, 2, 1), (1, 2, 0))
        for a in (1, -1)
        for b in (1, -1)
    ]
    pairs = []
    for p in edges:
        major = np.abs(p) == 1
        i, j = np.nonzero(major)[0]
        pairs += [p * (1 + e * np.eye(3)[i]), p * (1 + e * np.eye(3)[j])]
    corner = [np.array([1, 1, 1]) + e * np.eye(3)[k] for k in range(3)]
    uv = torch.tensor(np.array(pairs + corner)[None, None])
    for bias in (None, torch.full(uv.shape[:3], 1.3, dtype=torch.float64)):
        out = dr.texture(tex, uv, mip_level_bias=bias, boundary_mode="cube")[0, 0].numpy()
        np.testing.assert_allclose(out[0:24:2], out[1:24:2], atol=1e-6)
        np.testing.assert_allclose(out[24:26], out[25:27], atol=1e-6)
        assert len({tuple(np.round(v, 6)) for v in out[:24]}) > 6  # not a constant


def test_texture_gradients_2d(rng):
    tex = torch.tensor(rng.uniform(0, 1, (B, 4, 8, 2)), requires_grad=True)
    uv = torch.tensor(rng.uniform(0.05, 0.95, (B, H, W, 2)), requires_grad=True)
    uv_da = torch.tensor(rng.normal(0, 0.3, (B, H, W, 4)), requires_grad=True)
    bias = torch.tensor(rng.uniform(-0.5, 1, (B, H, W)), requires_grad=True)

    def f(tex, uv, uv_da, bias):
        return project(dr.texture(tex, uv * 1.3 - 0.15, uv_da, bias))

    assert torch.autograd.gradcheck(f, (tex, uv, uv_da, bias), eps=1e-6, atol=1e-7)
    for boundary in ("clamp", "zero"):  # uv outside [0, 1] with each

        def g(uv, boundary=boundary):
            return project(dr.texture(tex, uv * 1.3 - 0.15, boundary_mode=boundary))

        assert torch.autograd.gradcheck(g, (uv,), eps=1e-6, atol=1e-7)
    nearest = dr.texture(tex, uv, filter_mode="nearest")
    nearest = torch.autograd.grad(nearest.sum(), (tex, uv), allow_unused=True)
    assert nearest[0].sum() == B * H * W * 2 and (nearest[1] is None or (nearest[1] == 0).all())
    level1 = torch.tensor(rng.uniform(0, 1, (B, 2, 4, 2)), requires_grad=True)
    level2 = torch.tensor(rng.uniform(0, 1, (B, 1, 2, 2)), requires_grad=True)

    def h(tex, uv, level1, level2):
        return project(
            dr.texture(tex, uv, uv_da.detach(), bias.detach() + 0.8, mip=[level1, level2])
        )

    assert torch.autograd.gradcheck(h, (tex, uv, level1, level2), eps=1e-6, atol=1e-7)


def test_texture_gradients_cube(rng):
    tex = torch.tensor(rng.uniform(0, 1, (1, 6, 4, 4, 2)), requires_grad=True)
    uv = torch.tensor(rng.normal(size=(B, H, W, 3)), requires_grad=True)
    uv_da = torch.tensor(rng.normal(0, 0.4, (B, H, W, 6)), requires_grad=True)

    def f(tex, uv, uv_da):
        return project(dr.texture(tex, uv, uv_da, boundary_mode="cube"))

    assert torch.autograd.gradcheck(f, (tex, uv, uv_da), eps=1e-6, atol=1e-7)


BAD = [
    (lambda t, u: dr.texture(t[0], u), r"tex must have shape \[>0, >0, >0, >0\]"),
    (lambda t, u: dr.texture(t[:, None].expand(-1, 6, -1, -1, -1), u), "boundary_mode='cube'"),
    (lambda t, u: dr.texture(t, u, boundary_mode="cube"), "cube map tex must have shape"),
    (lambda t, u: dr.texture(t, u, filter_mode="cubic"), "invalid filter_mode"),
    (lambda t, u: dr.texture(t, u, boundary_mode="mirror"), "invalid boundary_mode"),
    (lambda t, u: dr.texture(t, u, filter_mode="linear-mipmap-linear"), "needs uv_da"),
    (lambda t, u: dr.texture(t, u[..., :1]), r"uv must have shape \[>0, >0, >0, 2\]"),
    (lambda t, u: dr.texture(t, u, u), r"uv_da must have shape"),
    (lambda t, u: dr.texture(t, u, mip_level_bias=u), r"mip_level_bias must have shape"),
    (lambda t, u: dr.texture(t.repeat(3, 1, 1, 1), u), "tex minibatch size must be 1 or 2"),
    (lambda t, u: dr.texture(t, u, None, u[..., 0], mip=[t]), "mip level 1 must have shape"),
    (lambda t, u: dr.texture(t, u, None, u[..., 0], dr.texture_construct_mip(t[:, :4])), "rebuild"),
    (lambda t, u: dr.texture(t, u, None, u[..., 0], mip=3), "mip must be"),
    (lambda t, u: dr.texture(t, u, None, u[..., 0], max_mip_level=-1), "max_mip_level"),
    (lambda t, u: dr.texture_construct_mip(t[:, :, :6]), "odd size"),
]  # fmt: skip


@pytest.mark.parametrize("call, message", BAD)
def test_bad_input(rng, call, message):
    tex = torch.tensor(rng.uniform(0, 1, (1, 8, 8, 3)))
    with pytest.raises(dr.NvdiffrastError, match=message):
        call(tex, random_uv(rng))
