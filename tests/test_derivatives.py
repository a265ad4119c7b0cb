"""Derivative images against the reverse pass through the same θ kernels and against
float64 central differences (visibility fixed, as in both)."""

import numpy as np
import pytest
import taichi as ti

from taichi_dr import Camera, Renderer, RenderSettings, UserError
from taichi_dr.checks import _weighted_sum
from taichi_dr.render.derivatives import derivative_image, scalar_parameter
from taichi_dr.scene import textured_sphere

CASES = [  # (mode, shading, parameter, options)
    ("hard", "blinn-phong", "translation", dict(direction=(0.4, -0.3, 0.5))),
    ("hard", "blinn-phong", "light_angle", dict(light=1, axis=(0.2, 1.0, -0.3))),
    ("hard", "ggx", "roughness", {}),
    ("antialias", "blinn-phong", "translation", dict(direction=(0.4, -0.3, 0.5))),
]


class Setup:
    """The shared check-grads scene (textured sphere, 24×24, L = Σ w ⊙ image)."""

    def __init__(self, scene):
        self.scene, self.r = scene, scene.r
        self.w = scene.weights.to_numpy()

    def tape(self, p) -> float:
        """dL/dθ by reverse mode through ``p.apply`` (visibility fixed)."""
        s = self.scene
        self.r.rasterize()
        with ti.ad.Tape(s.loss):
            p.apply()
            self.r.shade()
            _weighted_sum(self.r.image, s.weights, s.loss)
        return p.theta.grad.to_numpy()[0]

    def central_difference_image(self, p, h=1e-6) -> np.ndarray:
        theta0 = p.theta.to_numpy()[0]
        self.r.rasterize()
        images = []
        for step in (h, -h):
            p.set(theta0 + step)
            self.r.shade()
            images.append(self.r.result().image)
        p.set(theta0)
        return (images[0] - images[1]) / (2 * h)


@pytest.fixture(scope="module")
def setup(gradcheck_scene):
    yield Setup(gradcheck_scene)
    gradcheck_scene.r.configure(mode="hard", shading="blinn-phong")


@pytest.mark.parametrize("mode, shading, parameter, options", CASES)
def test_derivative_image_matches_reverse_mode_and_differences(
    setup, mode, shading, parameter, options
):
    r = setup.r
    r.configure(mode=mode, shading=shading)
    r.rasterize()
    r.shade()
    before = r.image.to_numpy()
    d = derivative_image(r, parameter, **options)
    again = derivative_image(r, parameter, **options)  # nothing accumulates across calls
    assert d.shape == (r.height, r.width, 3)
    np.testing.assert_array_equal(d, again)
    np.testing.assert_array_equal(r.image.to_numpy(), before)  # primal image unchanged
    assert np.count_nonzero(np.abs(d) > 1e-6) > 20

    p = scalar_parameter(r, parameter, **options)
    forward = float((setup.w.reshape(d.shape) * d).sum())
    reverse = setup.tape(p)
    np.testing.assert_allclose(forward, reverse, rtol=1e-8)

    fd = setup.central_difference_image(p)
    assert np.abs(d - fd).max() <= 1e-5 * np.abs(d).max()
    np.testing.assert_allclose(forward, float((setup.w.reshape(d.shape) * fd).sum()), rtol=1e-5)


def test_translation_derivative_is_linear_in_direction(setup):
    """∂I/∂θ along a + b equals the sum along a and along b (one call each; to the central
    difference's float64 round-off, ~1e-10 of the image over h = 1e-6)."""
    r = setup.r
    r.configure(mode="hard", shading="blinn-phong")
    a, b = np.array([0.3, 0.1, -0.2]), np.array([-0.1, 0.4, 0.2])
    da = derivative_image(r, "translation", direction=a)
    db = derivative_image(r, "translation", direction=b)
    dab = derivative_image(r, "translation", direction=a + b)
    np.testing.assert_allclose(dab, da + db, atol=1e-7 * np.abs(dab).max())


def test_bad_parameters_are_user_errors(setup):
    r = setup.r
    with pytest.raises(UserError, match="unknown parameter 'colour'"):
        derivative_image(r, "colour")
    with pytest.raises(UserError, match="directional light index"):
        derivative_image(r, "light_angle", light=7)
    with pytest.raises(UserError, match="axis must be a non-zero"):
        derivative_image(r, "light_angle", axis=(0, 0, 0))
    with pytest.raises(UserError, match="direction must be 3 finite"):
        derivative_image(r, "translation", direction=(1, np.nan, 0))


def test_derivative_images_need_one_layer():
    mesh = textured_sphere(n_lat=4, n_lon=6, texture_size=4)
    cam = Camera.look_at((0, 0, 3), (0, 0, 0), (0, 1, 0), 40.0, 4, 4, 0.5, 10.0)
    r = Renderer(mesh, cam, RenderSettings(layers=2))
    with pytest.raises(UserError, match="one layer"):
        derivative_image(r, "roughness")
