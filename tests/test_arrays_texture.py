"""The array version (issue 13) of textures: the flat mip pyramid and the sampler against
the float64 NumPy reference (the one the old ``Texture`` is tested against), and a
central-difference gradcheck through the pyramid."""

import numpy as np
import pytest
from reference import mip_pyramid, sample_texture

from taichi_dr.ad.gradcheck import central_difference
from taichi_dr.errors import UserError
from taichi_dr.render import arrays
from taichi_dr.render.texture import Texture, build_pyramid, lookup, mip_levels


def test_pyramid_levels_match_numpy(rng):
    """A non-square 4×16 texture: five levels down to 1×1, each the box average."""
    img = rng.uniform(0, 1, (4, 16, 3))
    tex = Texture(4, 16, "trilinear")
    tex.upload(img)
    sampler = tex.forward()
    table = mip_levels(4, 16, "trilinear")
    assert table.tolist() == [[0, 4, 16], [64, 2, 8], [80, 1, 4], [84, 1, 2], [86, 1, 1]]
    flat = sampler.texels.to_numpy()
    for (offset, h, w), want in zip(table, mip_pyramid(img)):
        np.testing.assert_allclose(flat[offset : offset + h * w].reshape(h, w, 3), want, 1e-14)
    np.testing.assert_array_equal(tex.image(), img)


@pytest.mark.parametrize("filter", ["nearest", "bilinear", "trilinear"])
@pytest.mark.parametrize("wrap", ["repeat", "clamp"])
def test_lookup_matches_numpy(filter, wrap, rng):
    img = rng.uniform(0, 1, (8, 16, 3))
    tex = Texture(8, 16, filter, wrap)
    tex.upload(img)
    n = 64
    uvs, fps = rng.uniform(-0.7, 1.7, (n, 2)), rng.uniform(0, 0.5, n)
    out = arrays.empty(n, 3)
    lookup(tex.forward(grad=False), arrays.from_numpy(uvs), arrays.from_numpy(fps), out)
    want = np.array([sample_texture(img, uvs[i], filter, wrap, fps[i]) for i in range(n)])
    np.testing.assert_allclose(out.to_numpy(), want, rtol=0, atol=1e-12)


def test_lookup_gradcheck(rng):
    """∂(Σ w ⊙ lookup)/∂ texels (through every mip level), uv and footprint, trilinear
    with clamping, against float64 central differences."""
    tex = Texture(4, 8, "trilinear", "clamp")
    tex.upload(rng.uniform(0, 1, (4, 8, 3)))
    n = 10
    uv = arrays.from_numpy(rng.uniform(-0.2, 1.2, (n, 2)), grad=True)
    footprint = arrays.from_numpy(rng.uniform(0.1, 0.9, n), grad=True)
    weights = rng.uniform(-1, 1, (n, 3))
    out = arrays.empty(n, 3, grad=True)

    def forward():
        sampler = tex.forward()
        lookup(sampler, uv, footprint, out)
        return sampler

    sampler = forward()
    tex.zero_grad()
    out.grad.from_numpy(weights)
    lookup(sampler, uv, footprint, out, backward=True)
    build_pyramid(tex.texels, tex.pyramid, tex.level_table, backward=True)
    for array in (tex.texels, uv, footprint):
        grad = array.grad.to_numpy().astype(np.float64)
        base = array.to_numpy().astype(np.float64)

        def loss(x, array=array, shape=base.shape):
            array.from_numpy(x.reshape(shape))
            forward()
            return float((out.to_numpy() * weights).sum())

        fd = central_difference(loss, base)
        array.from_numpy(base)
        assert np.abs(fd).max() > 1e-2
        np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7 * np.abs(fd).max())


def test_texture_bad_input():
    with pytest.raises(UserError, match="power-of-two"):
        Texture(6, 8, "trilinear")
    with pytest.raises(UserError, match="wrap mode 'mirror'"):
        Texture(8, 8, "bilinear", "mirror")
    tex = Texture(8, 8)
    with pytest.raises(UserError, match="8x8x3"):
        tex.upload(np.zeros((4, 4, 3)))
    with pytest.raises(UserError, match="finite"):
        tex.upload(np.full((8, 8, 3), np.nan))
    with pytest.raises(UserError, match="uv has 3 entries, out has 2"):
        lookup(tex.forward(), arrays.empty(3, 2), arrays.empty(2), arrays.empty(2, 3))
    assert tex.levels.to_numpy().tolist() == [[0, 8, 8]]
