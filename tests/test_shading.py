"""Each shading model and light type against closed-form values on a plane; textures
against a NumPy sampler."""

import math

import numpy as np
import pytest
from conftest import shared_renderer
from reference import sample_texture

from taichi_dr import Camera, Renderer, RenderSettings
from taichi_dr.errors import UserError
from taichi_dr.render import arrays
from taichi_dr.render.texture import Texture, lookup
from taichi_dr.scene import Mesh

EYE = np.array([0.3, 0.2, 2.0])
SH = np.random.default_rng(5).uniform(-0.3, 0.6, (9, 3))
MAT = dict(base_color=(0.7, 0.5, 0.3), specular=0.6, shininess=20.0, roughness=0.45, metallic=0.3)
DIRS = [((0.3, 0.5, 1.0), (0.9, 0.8, 0.7)), ((-0.6, 0.1, 0.4), (0.2, 0.3, 0.5))]
POINTS = [((0.5, -0.4, 1.2), (1.5, 1.2, 1.0))]
AMBIENT = np.array([0.05, 0.06, 0.07])


def _plane_renderer(shading):
    verts = np.array([[-2, -2, 0], [2, -2, 0], [2, 2, 0], [-2, 2, 0.0]])
    n = np.array([[0.1, 0.2, 1.0]] * 4)  # tilted shading normal, same everywhere
    mesh = Mesh(verts, np.array([[0, 1, 2], [0, 2, 3]]), normals=n / np.linalg.norm(n[0]))
    cam = Camera.look_at(EYE, (0, 0, 0), (0, 1, 0), 50.0, 12, 10, 0.5, 10.0)
    r = shared_renderer(mesh, cam, shading=shading)
    r.lights.reset(ambient=AMBIENT, directional=DIRS, point=POINTS, sh=SH)
    r.material.set(**MAT)
    return r


def _sh_irradiance_over_pi(n):
    x, y, z = n
    Y = np.array(
        [
            0.282095,
            0.488603 * y,
            0.488603 * z,
            0.488603 * x,
            1.092548 * x * y,
            1.092548 * y * z,
            0.315392 * (3 * z * z - 1),
            1.092548 * x * z,
            0.546274 * (x * x - y * y),
        ]
    )
    A = np.array([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5) / math.pi
    return (A * Y) @ SH


def _expected(model, p, n):
    a = np.array(MAT["base_color"])
    v = (EYE - p) / np.linalg.norm(EYE - p)
    c = a * (AMBIENT + _sh_irradiance_over_pi(n))
    lights = [(np.array(d) / np.linalg.norm(d), np.array(col)) for d, col in DIRS]
    for pos, col in POINTS:
        d = np.array(pos) - p
        lights.append((d / np.linalg.norm(d), np.array(col) / (d @ d)))
    for l, I in lights:
        nl = n @ l
        if nl <= 0:
            continue
        if model == "ggx":
            h = (l + v) / np.linalg.norm(l + v)
            alpha = MAT["roughness"] ** 2
            D = alpha**2 / (math.pi * ((n @ h) ** 2 * (alpha**2 - 1) + 1) ** 2)
            k = alpha / 2
            nv = n @ v
            G = nl / (nl * (1 - k) + k) * nv / (nv * (1 - k) + k)
            m = MAT["metallic"]
            f0 = (1 - m) * 0.08 * MAT["specular"] + m * a
            F = f0 + (1 - f0) * (1 - v @ h) ** 5
            c = c + I * ((1 - m) * a + math.pi * D * G * F / (4 * nl * nv)) * nl
            continue
        c = c + I * a * nl
        if model == "phong":
            r = 2 * nl * n - l
            c = c + I * MAT["specular"] * max(r @ v, 0) ** MAT["shininess"]
        if model == "blinn-phong":
            h = (l + v) / np.linalg.norm(l + v)
            c = c + I * MAT["specular"] * max(n @ h, 0) ** MAT["shininess"]
    return c


@pytest.mark.parametrize("model", ["lambert", "phong", "blinn-phong", "ggx"])
def test_shading_models_closed_form(model):
    r = _plane_renderer(model)
    out = r.render()
    assert out.mask.all()
    n = np.array([0.1, 0.2, 1.0]) / np.linalg.norm([0.1, 0.2, 1.0])
    pos = r.pixels.position.to_numpy().reshape(10, 12, 3)
    for y, x in [(0, 0), (4, 6), (9, 11), (5, 2)]:
        np.testing.assert_allclose(out.image[y, x], _expected(model, pos[y, x], n), rtol=1e-9)
    assert np.allclose(out.normal, n)


def test_normals_and_unlit_views():
    r = _plane_renderer("normals")
    n = np.array([0.1, 0.2, 1.0]) / np.linalg.norm([0.1, 0.2, 1.0])
    np.testing.assert_allclose(r.render().image, np.broadcast_to(n * 0.5 + 0.5, (10, 12, 3)))
    r = _plane_renderer("unlit")
    np.testing.assert_allclose(r.render().image, np.broadcast_to(MAT["base_color"], (10, 12, 3)))


def test_background_and_transparency_layers():
    """Two parallel planes with opacity 0.5, peeled into 2 layers, over a background."""
    verts = np.array([[-2, -2, 0], [2, -2, 0], [2, 2, 0], [-2, 2, 0.0]])
    verts = np.concatenate([verts, verts + [0, 0, -0.5]])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    cam = Camera.look_at((0, 0, 2), (0, 0, 0), (0, 1, 0), 40.0, 8, 8, 0.5, 10.0)
    bg = np.array([0.0, 0.0, 1.0])
    r = Renderer(
        Mesh(verts, faces), cam, RenderSettings(shading="unlit", layers=2, background=tuple(bg))
    )
    r.material.set(base_color=(1.0, 0.0, 0.0), opacity=0.5)
    out = r.render()
    # front layer 0.5·red, second 0.25·red, background 0.25·blue
    np.testing.assert_allclose(out.image, np.broadcast_to([0.75, 0, 0.25], (8, 8, 3)))
    np.testing.assert_allclose(out.alpha, 0.75)
    assert (out.triangle_id <= 1).all()  # AOVs of the first (nearest) layer

    # one layer (the fused single-pass compositor): 0.5·red over 0.5·blue, partial coverage
    r1 = Renderer(
        Mesh(verts[:4], faces[:2]), cam, RenderSettings(shading="unlit", background=tuple(bg))
    )
    r1.material.set(base_color=(1.0, 0.0, 0.0), opacity=0.5)
    out = r1.render()
    np.testing.assert_allclose(out.image, np.broadcast_to([0.5, 0, 0.5], (8, 8, 3)))
    np.testing.assert_allclose(out.alpha, 0.5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "trilinear"])
@pytest.mark.parametrize("wrap", ["repeat", "clamp"])
def test_texture_sampling_matches_numpy(mode, wrap, rng):
    img = rng.uniform(0, 1, (8, 16, 3))
    tex = Texture(8, 16, mode, wrap)
    tex.upload(img)
    sampler = tex.forward()
    n = 64
    uvs = rng.uniform(-0.7, 1.7, (n, 2))
    fps = rng.uniform(0, 0.5, n)
    out = arrays.empty(n, 3)
    lookup(sampler, arrays.from_numpy(uvs), arrays.from_numpy(fps), out)
    got = out.to_numpy()
    want = np.array([sample_texture(img, uvs[i], mode, wrap, fps[i]) for i in range(n)])
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_texture_bad_input():
    with pytest.raises(UserError, match="power-of-two"):
        Texture(6, 8, "trilinear")
    with pytest.raises(UserError, match="filter"):
        Texture(8, 8, "cubic")
    tex = Texture(8, 8, "bilinear")
    with pytest.raises(UserError, match="8x8x3"):
        tex.upload(np.zeros((4, 4, 3)))


def test_bad_render_settings():
    with pytest.raises(UserError, match="shading"):
        RenderSettings(shading="toon")
    with pytest.raises(UserError, match="cull"):
        RenderSettings(cull="sideways")
    with pytest.raises(UserError, match="gradient group 'bogus'"):
        RenderSettings(grads=("positions", "bogus"))
    with pytest.raises(UserError, match="layers"):
        RenderSettings(layers=0)
