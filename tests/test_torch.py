"""The torch bridge: torch.autograd.gradcheck (float64) of every kind of input, on the
shared check-grads scene (textured sphere, 24×24)."""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; pip install 'taichi-dr[torch]' to run these"
)

from taichi_dr import UserError  # noqa: E402
from taichi_dr.torch import render  # noqa: E402


def _tensor(a, rows=None):
    """A leaf tensor holding ``a``: an ndarray's values, or a value as it is."""
    a = a.to_numpy() if hasattr(a, "to_numpy") else np.asarray(a)
    a = a[:rows] if rows is not None else a
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.fixture(scope="module")
def r(gradcheck_scene):
    r = gradcheck_scene.r
    saved = {
        "positions": r.mesh.positions.to_numpy(),
        "colors": r.mesh.colors.to_numpy(),
        "texels": r.texture.texels.to_numpy(),
    }
    material = {n: r.material.value(n) for n in r.material.layout.names}
    yield r
    r.mesh.positions.from_numpy(saved["positions"])
    r.mesh.colors.from_numpy(saved["colors"])
    r.texture.texels.from_numpy(saved["texels"])
    r.material.set(**material)
    r.configure(mode="hard", shading="blinn-phong")


def _gradcheck(r, **inputs):
    names = list(inputs)

    def f(*tensors):
        return render(r, **dict(zip(names, tensors)))

    # nondet_tol: parallel atomic adds sum per-pixel contributions in varying order
    return torch.autograd.gradcheck(
        f, tuple(inputs.values()), eps=1e-6, atol=1e-7, rtol=1e-5, nondet_tol=1e-10, fast_mode=True
    )


def test_forward_is_the_renderers_image(r):
    r.configure(mode="hard", shading="blinn-phong")
    V = r.mesh.num_vertices
    image = render(r, positions=_tensor(r.mesh.positions, V))
    assert image.shape == (r.height, r.width, 3) and image.dtype == torch.float64
    np.testing.assert_array_equal(image.detach().numpy(), r.render().image)
    assert image.requires_grad


@pytest.mark.parametrize("mode", ["hard", "antialias"])
def test_gradcheck_geometry_colors_texture(r, mode):
    r.configure(mode=mode, shading="blinn-phong")
    V = r.mesh.num_vertices
    assert _gradcheck(
        r,
        positions=_tensor(r.mesh.positions, V),
        colors=_tensor(r.mesh.colors, V),
        texture=_tensor(r.texture.image()),
    )


def test_gradcheck_material_and_lights(r):
    r.configure(mode="hard", shading="ggx")
    m, L = r.material, r.lights
    assert _gradcheck(
        r,
        base_color=_tensor(m.base_color),
        roughness=_tensor(m.roughness),
        metallic=_tensor(m.metallic),
        dir_direction=_tensor(L.dir_direction),
        pose_translation=_tensor(r.vertex.params.value("pose_translation")),
    )


def test_gradcheck_can_fail(r, monkeypatch):
    """The check is not vacuous: a backward 0.1 % off fails it. (A failing check reruns
    in slow mode, one backward per output: hence a small crop of the image.)"""
    import taichi_dr.torch as tdt

    exact = tdt._read_grad
    monkeypatch.setattr(tdt, "_read_grad", lambda *args: exact(*args) * 1.001)
    r.configure(mode="hard", shading="blinn-phong")
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(
            lambda b: render(r, base_color=b)[10:14, 10:14],
            (_tensor(r.material.value("base_color")),),
            eps=1e-6,
            atol=1e-7,
            rtol=1e-5,
            fast_mode=True,
        )


def test_backward_uses_its_own_inputs(r):
    """Two renders, then the first one's backward: the gradient at the first inputs."""
    r.configure(mode="hard", shading="blinn-phong")
    p1 = _tensor(r.mesh.positions, r.mesh.num_vertices)
    p2 = (p1.detach() * 0.9).requires_grad_()
    w = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (r.height, r.width, 3)))
    alone = torch.autograd.grad((render(r, positions=p1) * w).sum(), p1)[0]
    other = torch.autograd.grad((render(r, positions=p2) * w).sum(), p2)[0]
    image1 = render(r, positions=p1)
    render(r, positions=p2)
    interleaved = torch.autograd.grad((image1 * w).sum(), p1)[0]
    torch.testing.assert_close(interleaved, alone, rtol=1e-12, atol=1e-12)
    assert (other - alone).abs().max() > 1e-3 * alone.abs().max()


def test_bad_inputs_are_user_errors(r):
    with pytest.raises(UserError, match="unknown input 'vertices'"):
        render(r, vertices=torch.zeros(3))
    with pytest.raises(UserError, match=r"colors must have shape \("):
        render(r, colors=torch.zeros(2, 3))
    with pytest.raises(UserError, match="must be a torch.Tensor"):
        render(r, roughness=0.5)
    with pytest.raises(UserError, match="at least one input"):
        render(r)
