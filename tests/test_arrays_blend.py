"""Compositing of one layer and of depth-peeled layers: float64 central-difference
gradchecks, bad input (closed-form images: test_shading)."""

import numpy as np
import pytest
import taichi as ti

from taichi_dr.ad.gradcheck import central_difference
from taichi_dr.errors import UserError
from taichi_dr.render import arrays
from taichi_dr.render.blend import composite, composite_finish, composite_layer
from taichi_dr.render.shading import Material

H, W, LAYERS = 3, 4, 2
N = H * W


def _layer_inputs(rng, k):
    tri = rng.integers(-1, 3, N).astype(np.int32)
    tri[k] = -1
    return tri, rng.uniform(0, 1, (N, 3))


def _new_layers(tris, colors, material, background, backward_weights=None):
    """composite_layer for each layer, then composite_finish; optionally backward."""
    accum, trans = arrays.empty(LAYERS * N, 3, grad=True), arrays.empty(LAYERS * N, grad=True)
    image, alpha = arrays.empty(N, 3, grad=True), arrays.empty(N, grad=True)
    for k in range(LAYERS):
        composite_layer(k, tris[k], colors[k], material, accum, trans)
    composite_finish(LAYERS, accum, trans, background, image, alpha)
    if backward_weights is not None:
        image.grad.from_numpy(backward_weights[0])
        alpha.grad.from_numpy(backward_weights[1])
        composite_finish(LAYERS, accum, trans, background, image, alpha, backward=True)
        for k in reversed(range(LAYERS)):
            composite_layer(k, tris[k], colors[k], material, accum, trans, backward=True)
    return image.to_numpy(), alpha.to_numpy()


def _check(loss, array, grad):
    base = array.to_numpy().astype(np.float64)

    def f(x):
        array.from_numpy(x.reshape(base.shape))
        return loss()

    fd = central_difference(f, base)
    array.from_numpy(base)
    assert np.abs(fd).max() > 1e-2
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-8 * np.abs(fd).max())


def test_composite_gradcheck(rng):
    """One layer and two peeled layers: ∂(Σ w ⊙ image + Σ u · alpha)/∂ colours, material
    (opacity) and a per-pixel background, against central differences."""
    material = Material(opacity=0.7)
    background = arrays.from_numpy(rng.uniform(0, 1, (N, 3)), grad=True)
    tris, colors = zip(*[_layer_inputs(rng, k) for k in range(LAYERS)])
    tris = [arrays.from_numpy(t, dtype=ti.i32) for t in tris]
    colors = [arrays.from_numpy(c, grad=True) for c in colors]
    weights = (rng.uniform(-1, 1, (N, 3)), rng.uniform(-1, 1, N))
    inputs = (material.values, background, *colors)

    def value(image, alpha):
        return float((image * weights[0]).sum() + (alpha * weights[1]).sum())

    image, alpha = arrays.empty(N, 3, grad=True), arrays.empty(N, grad=True)
    single = (tris[0], colors[0], material.values, background, image, alpha)

    def one_layer():
        composite(*single)
        return value(image.to_numpy(), alpha.to_numpy())

    def layers():
        return value(*_new_layers(tris, colors, material.values, background))

    for loss in (one_layer, layers):
        for a in inputs:
            a.grad.fill(0)
        if loss is one_layer:
            composite(*single)
            image.grad.from_numpy(weights[0])
            alpha.grad.from_numpy(weights[1])
            composite(*single, backward=True)
        else:
            _new_layers(tris, colors, material.values, background, weights)
        grads = [a.grad.to_numpy().astype(np.float64) for a in inputs]
        for a, g in zip(inputs, grads):
            if loss is one_layer and a is colors[1]:
                assert not g.any()  # not an input of one layer
                continue
            _check(loss, a, g)


def test_composite_bad_input():
    m = Material()
    tri, color = arrays.empty(4, dtype=ti.i32), arrays.empty(4, 3)
    image, alpha = arrays.empty(4, 3), arrays.empty(4)
    with pytest.raises(UserError, match="background must be one colour"):
        composite(tri, color, m.values, arrays.empty(3, 3), image, alpha)
    with pytest.raises(UserError, match="color has 3 entries, expected 4"):
        composite(tri, arrays.empty(3, 3), m.values, arrays.empty(1, 3), image, alpha)
    with pytest.raises(UserError, match="packed"):
        composite(tri, color, arrays.empty(3), arrays.empty(1, 3), image, alpha)
    accum, trans = arrays.empty(8, 3), arrays.empty(8)
    with pytest.raises(UserError, match="layer 2 does not fit"):
        composite_layer(2, tri, color, m.values, accum, trans)
    with pytest.raises(UserError, match="3 layers do not fit"):
        composite_finish(3, accum, trans, arrays.empty(1, 3), image, alpha)
