"""The array versions (issue 13) of shading, lights, material and texture: the new ops
against the old field-based classes on the same scene (B = 2 views with different
cameras and lights, each equal to a single-view old render, gradients of every input
equal), float64 central-difference gradchecks of the new ops, and gradient stops."""

import numpy as np
import pytest
import taichi as ti

from taichi_dr.ad.gradcheck import central_difference
from taichi_dr.camera import Camera
from taichi_dr.checks import _weighted_sum
from taichi_dr.errors import UserError
from taichi_dr.render import arrays
from taichi_dr.render.blend import composite
from taichi_dr.render.lights import LIGHTS_SIZE, PackedLights
from taichi_dr.render.shading import MATERIAL_LAYOUT, PackedMaterial, shade
from taichi_dr.render.texture import MipTexture, build_pyramid

SECOND_LIGHTS = dict(
    ambient=(0.05, 0.1, 0.02),
    directional=[((-0.5, 0.3, 0.8), (0.6, 0.7, 0.9))],
    point=[((0.8, -0.6, 1.5), (1.5, 1.0, 0.8)), ((-1.0, 1.0, 1.2), (0.5, 0.9, 1.3))],
    sh=np.random.default_rng(9).uniform(-0.1, 0.3, (9, 3)),
)
PIXEL_INPUTS = ("position", "normal", "color", "uv", "footprint")
OLD_LIGHT_FIELDS = ("ambient", "dir_direction", "dir_color", "point_position", "point_color")


def _old_view(scene, model, camera, set_lights, grads):
    """Old renderer, one view: its inputs to the shader, image and, with ``grads``,
    every gradient of L = Σ w ⊙ image (w: the scene's weights)."""
    r = scene.r
    r.configure(shading=model, mode="hard")
    r.set_camera(camera)
    set_lights()
    r.rasterize()
    r.shade()  # the per-pixel inputs of the shader, and the image
    if grads:
        r.zero_grad()
        scene.loss[None] = 0.0
        tri = r.raster.triangle_id
        with ti.ad.Tape(scene.loss):  # the kernels of r.shade() from the texture on
            r.texture.forward()
            r.shader.forward(
                model,
                tri,
                *(getattr(r, n) for n in PIXEL_INPUTS),
                r.texture,
                r.vertex.eye,
                r.lights,
                r.material,
            )
            r.compositor.single(r.shader.image, tri, r.material.opacity)
            _weighted_sum(r.image, scene.weights, scene.loss)
    n = r.width * r.height
    flat = lambda f, c: f.to_numpy().astype(np.float64).reshape(n, *([c] if c else []))  # noqa: E731
    out = {
        "triangle_id": r.raster.triangle_id.to_numpy().reshape(n),
        "image": flat(r.image, 3),
        "alpha": flat(r.alpha, 0),
        "eye": r.vertex.eye.to_numpy().astype(np.float64),
        "grad_eye": r.vertex.eye.grad.to_numpy(),
        "grad_texels": r.texture.texels.grad.to_numpy().reshape(-1, 3),
        "material": {n: getattr(r.material, n).to_numpy() for n in MATERIAL_LAYOUT.names},
        "grad_material": {n: getattr(r.material, n).grad.to_numpy() for n in MATERIAL_LAYOUT.names},
        "lights": {n: getattr(r.lights, n).to_numpy() for n in (*OLD_LIGHT_FIELDS, "sh")},
        "grad_lights": {n: getattr(r.lights, n).grad.to_numpy() for n in (*OLD_LIGHT_FIELDS, "sh")},
        "count": r.lights.count.to_numpy(),
    }
    for name, c in zip(PIXEL_INPUTS, (3, 3, 3, 2, 0)):
        out[name] = flat(getattr(r, name), c)
        out["grad_" + name] = flat(getattr(r, name).grad, c)
    return out if grads else {k: v for k, v in out.items() if not k.startswith("grad_")}


@pytest.fixture(scope="module")
def scene(gradcheck_scene):
    """The check-grads scene (its renderer's old kernels are the ones test_check_grads
    compiles), its first camera ``camera0`` and ``restore()``, which puts its lights
    back."""
    r = gradcheck_scene.r
    camera = r.camera
    saved = {n: getattr(r.lights, n).to_numpy() for n in (*OLD_LIGHT_FIELDS, "sh", "count")}

    def restore():
        for name, value in saved.items():
            getattr(r.lights, name).from_numpy(value)

    gradcheck_scene.restore, gradcheck_scene.camera0 = restore, camera
    yield gradcheck_scene
    restore()
    r.set_camera(camera)
    r.configure(shading="blinn-phong", mode="hard")


def _new_arrays(views, texels, filter="trilinear"):
    """Taichi ndarrays (with gradients) of the old views' inputs, batched."""
    cat = lambda key: np.concatenate([v[key] for v in views])  # noqa: E731
    a = {name: arrays.from_numpy(cat(name), grad=True) for name in PIXEL_INPUTS}
    a["triangle_id"] = arrays.from_numpy(cat("triangle_id"), dtype=ti.i32)
    a["eye"] = arrays.from_numpy(np.stack([v["eye"] for v in views]), grad=True)
    a["material"] = PackedMaterial(**views[0]["material"])
    lights = PackedLights(len(views))
    for b, v in enumerate(views):
        lights.set(view=b, count=tuple(v["count"]), **v["lights"])
    a["lights"] = lights
    a["texture"] = MipTexture(texels.shape[0], texels.shape[1], filter)
    a["texture"].upload(texels)
    return a


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


def _two_views(scene, model, grads):
    """The old renderer's two views (the scene's camera and lights; another camera and
    SECOND_LIGHTS), and the new ops run on both in one batch: (views, arrays, image,
    alpha) after a backward pass from the scene's weights when ``grads``."""
    r = scene.r
    second = Camera.look_at((-1.2, 1.4, 2.0), (0, 0.1, 0), (0, 1, 0), 45.0, 24, 24, 0.5, 10.0)
    views = [
        _old_view(scene, model, scene.camera0, scene.restore, grads),
        _old_view(scene, model, second, lambda: r.lights.set(**SECOND_LIGHTS), grads),
    ]
    assert views[0]["count"].tolist() != views[1]["count"].tolist()
    a = _new_arrays(views, r.texture.texels.to_numpy())
    weights = np.concatenate([scene.weights.to_numpy().reshape(-1, 3)] * 2)
    image, alpha = _run_new(model, arrays.Frame(2, 24, 24), a, weights if grads else None)
    n = 24 * 24
    for b, v in enumerate(views):
        view = slice(b * n, (b + 1) * n)
        assert (v["triangle_id"] >= 0).sum() > 100
        np.testing.assert_allclose(image[view], v["image"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(alpha[view], v["alpha"], rtol=0, atol=1e-12)
    return views, a


@pytest.mark.parametrize("model", ["lambert", "phong", "blinn-phong", "normals", "unlit"])
def test_shade_matches_old_classes_two_views(scene, model):
    """B = 2 views (other camera, other lights) through the new shade + composite equal
    two old single-view renders, for every model."""
    _two_views(scene, model, grads=False)


def test_shade_gradients_match_old_classes_two_views(scene):
    """The same with GGX (every material and light parameter but shininess matters):
    images, and the gradients of every input, per view (lights, eyes, pixels) or summed
    over the views (material, texels)."""
    views, a = _two_views(scene, "ggx", grads=True)
    n = 24 * 24
    for b, v in enumerate(views):
        view = slice(b * n, (b + 1) * n)
        for name in PIXEL_INPUTS:
            got = a[name].grad.to_numpy()[view]
            assert np.abs(v["grad_" + name]).max() > 0, name
            np.testing.assert_allclose(got, v["grad_" + name], rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(a["eye"].grad.to_numpy()[b], v["grad_eye"], rtol=1e-10)
        for name, want in v["grad_lights"].items():
            got = a["lights"].grad(name)[b]
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)
    for name in MATERIAL_LAYOUT.names:
        want = sum(v["grad_material"][name] for v in views)
        np.testing.assert_allclose(a["material"].grad(name), want, rtol=1e-10, err_msg=name)
    want = sum(v["grad_texels"] for v in views)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(a["texture"].texels.grad.to_numpy(), want, rtol=1e-10, atol=1e-12)


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
    a["material"] = PackedMaterial(
        base_color=(0.9, 0.7, 0.5), specular=0.6, shininess=7.0, roughness=0.55, metallic=0.3
    )
    a["lights"] = PackedLights(lights_views)
    for b in range(lights_views):
        a["lights"].set(
            view=b,
            ambient=rng.uniform(0, 0.2, 3),
            directional=[(rng.normal(size=3), rng.uniform(0.3, 1, 3)) for _ in range(2)],
            point=[(rng.uniform(-1, 1, 3) + [0, 0, 1.5], rng.uniform(0.5, 2, 3))],
            sh=rng.uniform(-0.1, 0.3, (9, 3)),
        )
    a["texture"] = MipTexture(4, 8, "trilinear")
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
    m = PackedMaterial()
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

    lights = PackedLights(views=2, point=[((0, 1, 2), (1, 1, 1))])
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
        (lambda: PackedMaterial(shininess=-1.0), "shininess must be ≥ 0"),
        (lambda: PackedMaterial(roughness=1.5), r"roughness must be in \[0, 1\]"),
        (lambda: PackedMaterial(base_color=(np.nan, 0, 0)), "finite"),
        (lambda: PackedMaterial(base_color=(1, 0)), "shape"),
        (lambda: PackedMaterial(glossiness=1.0), "unknown material parameter 'glossiness'"),
        (lambda: PackedLights(directional=[((0, 0, 0), (1, 1, 1))]), "non-zero"),
        (lambda: PackedLights(point=[((0, 0, 1), (1, 1, 1))] * 5), "at most"),
        (lambda: PackedLights(ambient=-0.1), "ambient must be ≥ 0"),
        (lambda: PackedLights(count=(5, 0)), "count must be 0..4"),
        (lambda: PackedLights(views=2).set(view=2, ambient=0.1), "out of range"),
        (lambda: PackedLights(views=0), "positive integer"),
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
    m, lights = PackedMaterial(), PackedLights(views=3)
    args = (tri, px, px, px, None, None, eye, m.values)
    with pytest.raises(UserError, match="unknown shading 'toon'"):
        shade("toon", frame, *args, lights.values, lights.counts, None, px)
    with pytest.raises(UserError, match="one per view"):
        shade("lambert", frame, *args, lights.values, lights.counts, None, px)
    shared = PackedLights()
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
    repeated = PackedLights(views=2)
    repeated.values.from_numpy(np.tile(shared.values.to_numpy(), 2))
    repeated.counts.from_numpy(np.tile(shared.counts.to_numpy(), 2))
    white = MipTexture(2, 2, "bilinear")
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
