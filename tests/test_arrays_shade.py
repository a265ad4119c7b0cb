"""Shading, lights, material and texture as array operations: float64 central-difference
gradchecks (B = 2 views, per-view lights), gradient stops, the packed parameters, bad
input. (Closed-form images: test_shading; whole renders: test_check_grads.)"""

import numpy as np
import pytest
import taichi as ti

from taichi_dr.ad.gradcheck import central_difference
from taichi_dr.errors import UserError
from taichi_dr.render import arrays
from taichi_dr.render.blend import composite
from taichi_dr.render.lights import LIGHTS_SIZE, Lights
from taichi_dr.render.shading import MATERIAL_LAYOUT, Material, shade
from taichi_dr.render.texture import Texture, build_pyramid

PIXEL_INPUTS = ("position", "normal", "color", "uv", "footprint")


def _run_new(model, frame, a, weights=None, material_grad=True, texture_grad=True):
    """New ops forward (shade, then composite over black) and, given ``weights`` on the
    image, backward into every input's gradient; returns (image, alpha)."""
    n = frame.pixels
    shaded, image = arrays.empty(n, 3, grad=True), arrays.empty(n, 3, grad=True)
    alpha = arrays.empty(n, grad=True)
    background = arrays.from_numpy(np.zeros((1, 3)))
    material = a["material"].array(material_grad)
    sampler = a["texture"].forward(texture_grad)
    inputs = [a[k] for k in ("triangle_id", *PIXEL_INPUTS, "eye")]
    lights = (a["lights"].array(), a["lights"].counts)
    shade(model, frame, *inputs, material, *lights, sampler, shaded)
    composite(a["triangle_id"], shaded, material, background, image, alpha)
    if weights is not None:
        for name in (*PIXEL_INPUTS, "eye"):
            a[name].grad.fill(0)
        for owner in ("material", "lights", "texture"):
            a[owner].zero_grad()
        image.grad.from_numpy(weights)
        alpha.grad.fill(0)
        composite(a["triangle_id"], shaded, material, background, image, alpha, backward=True)
        shade(model, frame, *inputs, material, *lights, sampler, shaded, backward=True)
        if texture_grad and a["texture"].pyramid is not None:
            build_pyramid(a["texture"].texels, sampler.texels, a["texture"].level_table, True)
    return image.to_numpy(), alpha.to_numpy()


def _random_pixels(rng, frame, lights_views):
    """Random per-pixel shading inputs (some empty pixels), packed material and lights,
    a trilinear 4×8 texture."""
    n = frame.pixels
    tri = rng.integers(0, 5, n).astype(np.int32)
    tri[::5] = -1
    normal = rng.normal(size=(n, 3))
    values = {
        "position": rng.uniform(-0.5, 0.5, (n, 3)),
        "normal": normal,
        "color": rng.uniform(0.3, 1.0, (n, 3)),
        "uv": rng.uniform(-0.3, 1.3, (n, 2)),
        "footprint": rng.uniform(0.05, 0.6, n),
        "eye": rng.uniform(-0.5, 0.5, (frame.views, 3)) + [0, 0, 3.0],
    }
    a = {k: arrays.from_numpy(v, grad=True) for k, v in values.items()}
    a["triangle_id"] = arrays.from_numpy(tri, dtype=ti.i32)
    a["material"] = Material(
        base_color=(0.9, 0.7, 0.5), specular=0.6, shininess=7.0, roughness=0.55, metallic=0.3
    )
    a["lights"] = Lights(lights_views)
    for b in range(lights_views):
        a["lights"].set(
            view=b,
            ambient=rng.uniform(0, 0.2, 3),
            directional=[(rng.normal(size=3), rng.uniform(0.3, 1, 3)) for _ in range(2)],
            point=[(rng.uniform(-1, 1, 3) + [0, 0, 1.5], rng.uniform(0.5, 2, 3))],
            sh=rng.uniform(-0.1, 0.3, (9, 3)),
        )
    a["texture"] = Texture(4, 8, "trilinear")
    a["texture"].upload(rng.uniform(0, 1, (4, 8, 3)))
    return a


def test_shade_gradcheck(rng):
    """GGX: ∂(Σ w ⊙ composite(shade(...)))/∂ every real input (per-pixel attributes,
    eyes, material, per-view lights, texels through the pyramid) against float64 central
    differences, B = 2 views of 2×3 pixels. (Each model's backward compiles for tens of
    seconds, so one model: GGX uses every parameter but the Phong shininess, whose
    lobe code the old classes share and test_check_grads checks.)"""
    frame = arrays.Frame(2, 2, 3)
    a = _random_pixels(rng, frame, lights_views=2)
    weights = rng.uniform(-1, 1, (frame.pixels, 3))
    _run_new("ggx", frame, a, weights)
    targets = {name: a[name] for name in (*PIXEL_INPUTS, "eye")}
    targets.update(
        material=a["material"].values, lights=a["lights"].values, texels=a["texture"].texels
    )

    grads = {name: array.grad.to_numpy().astype(np.float64) for name, array in targets.items()}
    for name, array in targets.items():
        grad = grads[name]
        base = array.to_numpy().astype(np.float64)

        def loss(x, array=array, shape=base.shape):
            array.from_numpy(x.reshape(shape))
            image, _ = _run_new("ggx", frame, a)
            return float((image * weights).sum())

        fd = central_difference(loss, base)
        array.from_numpy(base)
        assert np.abs(fd).max() > 1e-3, name
        np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7 * np.abs(fd).max(), err_msg=name)


def test_gradient_stops(rng):
    """An input passed without gradient storage (the material, the texture) gets none,
    and every other input's gradient is unchanged."""
    frame = arrays.Frame(2, 2, 3)
    a = _random_pixels(rng, frame, lights_views=1)
    weights = rng.uniform(-1, 1, (frame.pixels, 3))
    full_image, _ = _run_new("unlit", frame, a, weights)
    full = {k: a[k].grad.to_numpy() for k in ("color", "uv", "footprint")}
    assert a["material"].values.grad.to_numpy().any() and a["texture"].texels.grad.to_numpy().any()
    image, _ = _run_new("unlit", frame, a, weights, material_grad=False, texture_grad=False)
    np.testing.assert_array_equal(image, full_image)
    assert not a["material"].values.grad.to_numpy().any()
    assert not a["texture"].texels.grad.to_numpy().any()
    for name, want in full.items():
        assert np.abs(want).max() > 0, name
        np.testing.assert_array_equal(a[name].grad.to_numpy(), want, err_msg=name)


def test_packed_material_and_lights():
    m = Material()
    assert m.roughness == 0.5 and m.base_color.tolist() == [0.8, 0.8, 0.8]
    m.set(roughness=0.25, base_color=0.3)
    assert m.roughness == 0.25 and m.base_color.tolist() == [0.3] * 3 and m.shininess == 32.0
    values = m.values.to_numpy()
    assert values[MATERIAL_LAYOUT.span("roughness")].tolist() == [0.25]
    m.reset(metallic=1.0)
    assert m.roughness == 0.5 and m.metallic == 1.0
    m.values.grad.from_numpy(np.arange(8.0))
    assert m.grad("base_color").tolist() == [0, 1, 2] and m.grad("opacity") == 7.0
    np.testing.assert_array_equal(m.array(grad=False).to_numpy(), m.values.to_numpy())

    lights = Lights(views=2, point=[((0, 1, 2), (1, 1, 1))])
    assert lights.values.shape[0] == 2 * LIGHTS_SIZE
    assert lights.count.tolist() == [[1, 1], [1, 1]]
    lights.set(view=1, directional=[], ambient=0.5)
    assert lights.count.tolist() == [[1, 1], [0, 1]]
    assert lights.ambient[0].tolist() == [0.1] * 3 and lights.ambient[1].tolist() == [0.5] * 3
    default = np.array([0.3, 0.6, 1.0])
    np.testing.assert_allclose(lights.dir_direction[0][0], default / np.linalg.norm(default))
    lights.set(count=(4, 4))
    assert lights.count.tolist() == [[4, 4], [4, 4]]
    assert lights.sh.shape == (2, 9, 3) and lights.grad("sh").shape == (2, 9, 3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: Material(shininess=-1.0), "shininess must be ≥ 0"),
        (lambda: Material(roughness=1.5), r"roughness must be in \[0, 1\]"),
        (lambda: Material(base_color=(np.nan, 0, 0)), "finite"),
        (lambda: Material(base_color=(1, 0)), "shape"),
        (lambda: Material(glossiness=1.0), "unknown material parameter 'glossiness'"),
        (lambda: Lights(directional=[((0, 0, 0), (1, 1, 1))]), "non-zero"),
        (lambda: Lights(point=[((0, 0, 1), (1, 1, 1))] * 5), "at most"),
        (lambda: Lights(ambient=-0.1), "ambient must be ≥ 0"),
        (lambda: Lights(count=(5, 0)), "count must be 0..4"),
        (lambda: Lights(views=2).set(view=2, ambient=0.1), "out of range"),
        (lambda: Lights(views=0), "positive integer"),
    ],
)
def test_packed_bad_input(call, match):
    with pytest.raises(UserError, match=match):
        call()


def test_shade_bad_input():
    frame = arrays.Frame(2, 2, 2)
    n = frame.pixels
    tri = arrays.empty(n, dtype=ti.i32)
    px = arrays.empty(n, 3)
    eye = arrays.empty(2, 3)
    m, lights = Material(), Lights(views=3)
    args = (tri, px, px, px, None, None, eye, m.values)
    with pytest.raises(UserError, match="unknown shading 'toon'"):
        shade("toon", frame, *args, lights.values, lights.counts, None, px)
    with pytest.raises(UserError, match="one per view"):
        shade("lambert", frame, *args, lights.values, lights.counts, None, px)
    shared = Lights()
    with pytest.raises(UserError, match="eye has 1 entries, expected 2"):
        bad = (*args[:6], arrays.empty(1, 3), m.values)
        shade("lambert", frame, *bad, shared.values, shared.counts, None, px)


@ti.kernel
def _weighted_loss(image: arrays.Vec3, weights: arrays.Vec3, loss: arrays.Real):
    for i in range(image.shape[0]):
        loss[0] += (image[i] * weights[i]).sum()


def test_tape_records_the_array_ops(rng):
    """Under ``ti.ad.Tape`` with an ndarray loss, texture pyramid + shade + composite give
    the gradients of the explicit backward calls."""
    frame = arrays.Frame(2, 2, 3)
    a = _random_pixels(rng, frame, lights_views=2)
    weights = rng.uniform(-1, 1, (frame.pixels, 3))
    _run_new("unlit", frame, a, weights)
    want = {k: a[k].grad.to_numpy() for k in ("color", "uv", "footprint")}
    want["texels"] = a["texture"].texels.grad.to_numpy()
    want["material"] = a["material"].values.grad.to_numpy()
    for name in (*PIXEL_INPUTS, "eye"):
        a[name].grad.fill(0)
    for owner in ("material", "lights", "texture"):
        a[owner].zero_grad()
    n = frame.pixels
    shaded, image = arrays.empty(n, 3, grad=True), arrays.empty(n, 3, grad=True)
    alpha, loss = arrays.empty(n, grad=True), arrays.empty(1, grad=True)
    w = arrays.from_numpy(weights)
    background = arrays.from_numpy(np.zeros((1, 3)))
    inputs = [a[k] for k in ("triangle_id", *PIXEL_INPUTS, "eye")]
    material = a["material"].values
    with ti.ad.Tape(loss=loss):
        sampler = a["texture"].forward()
        lights = (a["lights"].values, a["lights"].counts)
        shade("unlit", frame, *inputs, material, *lights, sampler, shaded)
        composite(a["triangle_id"], shaded, material, background, image, alpha)
        _weighted_loss(image, w, loss)
    got = {k: a[k].grad.to_numpy() for k in ("color", "uv", "footprint")}
    got["texels"] = a["texture"].texels.grad.to_numpy()
    got["material"] = a["material"].values.grad.to_numpy()
    for name, value in want.items():
        assert np.abs(value).max() > 0, name
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-14, err_msg=name)


def test_untextured_shared_lights_equal_textured_per_view_lights(rng):
    """Without a texture (uv and footprint None) the albedo is the texture-free one, and
    one light set shared by the views equals that set repeated per view."""
    frame = arrays.Frame(2, 2, 3)
    a = _random_pixels(rng, frame, lights_views=1)
    shared = a["lights"]
    repeated = Lights(views=2)
    repeated.values.from_numpy(np.tile(shared.values.to_numpy(), 2))
    repeated.counts.from_numpy(np.tile(shared.counts.to_numpy(), 2))
    white = Texture(2, 2, "bilinear")
    white.upload(np.ones((2, 2, 3)))
    inputs = [a[k] for k in ("triangle_id", *PIXEL_INPUTS, "eye")]
    material = a["material"].values
    textured, plain = arrays.empty(frame.pixels, 3), arrays.empty(frame.pixels, 3)
    lights = (repeated.values, repeated.counts)
    shade("lambert", frame, *inputs, material, *lights, white.forward(grad=False), textured)
    untextured_inputs = inputs[:4] + [None, None] + inputs[6:]
    shade("lambert", frame, *untextured_inputs, material, shared.values, shared.counts, None, plain)
    assert np.abs(plain.to_numpy()).max() > 0
    np.testing.assert_allclose(plain.to_numpy(), textured.to_numpy(), rtol=1e-14, atol=0)
