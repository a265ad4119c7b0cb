"""Every differentiable op against float64 central differences (the ``check-grads``
command's cases), plus no NaN/inf on degenerate scenes and one-line errors."""

import numpy as np
import pytest

from taichi_dr.checks import OPS, RTOL, array_parameter, compare, packed_parameter, run_checks
from taichi_dr.cli import main


@pytest.fixture(scope="module")
def scene(gradcheck_scene):
    return gradcheck_scene


@pytest.mark.parametrize("op", OPS)
def test_op_gradients_match_central_differences(scene, op):
    results = run_checks(op, scene=scene)
    assert results
    for r in results:
        assert r.ok, r.row()
        if op != "nmr":
            assert r.max_rel_err <= RTOL, r.row()


def test_check_can_fail(scene):
    """The comparison is not vacuous: a finite difference with a far too large step
    (30° of field of view) disagrees with the tape and is reported as a failure."""
    fov = packed_parameter(scene.r.vertex.params, "fov")
    bad = compare(scene, "probe", "fov", fov, False, h=30.0)  # huge step
    assert not bad.ok


@pytest.mark.parametrize(
    "mode,groups",
    [
        ("hard", ("positions",)),
        ("hard", ("material", "lights")),
        ("hard", ("texture", "camera")),
        ("soft", ("positions",)),
        ("soft", ("colors", "material", "lights", "camera")),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else v,
)
def test_grads_setting_keeps_chosen_gradients_and_zeroes_the_rest(scene, mode, groups):
    """RenderSettings.grads: the chosen groups' gradients equal the all-groups ones (to
    rounding), every other group's are exactly zero (soft mode has no texture: its uvs and
    texture gradients are zero either way)."""
    r = scene.r
    r.configure(mode=mode, shading="blinn-phong")
    fields = {
        "positions": array_parameter(r.mesh.positions),
        "colors": array_parameter(r.mesh.colors),
        "uvs": array_parameter(r.mesh.uvs),
        "texture": array_parameter(r.texture.texels),
        "material": packed_parameter(r.material, "shininess"),
        "lights": packed_parameter(r.lights, "sh"),
        "camera": packed_parameter(r.vertex.params, "camera_translation"),
    }
    full = {g: scene.gradient(f) for g, f in fields.items()}
    r.configure(grads=groups)
    try:
        for g, f in fields.items():
            got = scene.gradient(f)
            if g in groups:
                assert np.abs(full[g]).max() > 0, g
                np.testing.assert_allclose(got, full[g], rtol=1e-9, atol=1e-12, err_msg=g)
            else:
                assert not got.any(), g
    finally:
        r.configure(mode="hard", grads="all")


def test_antialias_gradients_reach_silhouette_vertices(scene):
    r = scene.r
    r.configure(mode="antialias")
    positions = array_parameter(r.mesh.positions)
    g = scene.gradient(positions)
    edges = r.pixels.edges.to_numpy()
    silhouette_vertices = np.unique(edges[..., 1:][edges[..., 1] >= 0])
    assert len(silhouette_vertices) > 0
    r.configure(mode="hard")
    g_hard = scene.gradient(positions)
    moved = np.abs(g - g_hard).sum(1)
    assert (moved[silhouette_vertices] > 1e-6).all()


def test_degenerate_scene_gives_finite_gradients(scene):
    """Zero-area, edge-on, near-plane and camera-inside configurations: no NaN/inf."""
    r = scene.r
    pos = r.mesh.positions.to_numpy()
    bad = pos.copy()
    bad[1] = bad[0]  # collapse an edge: zero-area faces
    bad[5] = bad[4] + (bad[6] - bad[4]) * 0.5  # a vertex on its neighbours' line
    try:
        for mode in ("hard", "antialias"):
            r.configure(mode=mode)
            for translation in ((0, 0, 0), (0, 0, 2.1), (0, 0, 2.6)):  # inside, at near
                r.mesh.positions.from_numpy(bad)
                r.set_camera(r.camera)
                r.vertex.params.set(camera_translation=translation)
                g = scene.gradient(array_parameter(r.mesh.positions))
                assert np.isfinite(g).all()
                assert np.isfinite(r.image.to_numpy()).all()
                assert np.isfinite(r.vertex.params.grad("camera_translation")).all()
    finally:
        r.mesh.positions.from_numpy(pos)
        r.set_camera(r.camera)
        r.configure(mode="hard")


def test_check_grads_command_one_op(capsys):
    assert main(["check-grads", "--op", "pose"]) == 0
    out = capsys.readouterr().out
    assert "pose_rotation" in out and "FAIL" not in out and "2 passed, 0 failed" in out


def test_vulkan_refuses_gradients():
    import subprocess
    import sys

    code = (
        "import taichi_dr, taichi_dr.backend as b\n"
        "got = taichi_dr.init('vulkan')\n"
        "try:\n    b.require_autodiff()\nexcept taichi_dr.UserError as e:\n"
        "    print('refused:', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if "not available" in res.stderr:
        pytest.skip("vulkan is not available here: " + res.stderr.strip().splitlines()[-1])
    assert "refused: reverse-mode gradients are not supported on vulkan" in res.stdout


def test_nmr_check_can_fail(scene):
    """The downhill check is not vacuous: stepping *along* the NMR gradient raises the
    loss, and the check reports that as a failure."""
    from taichi_dr.checks import nmr_downhill

    results = nmr_downhill(scene, direction=1.0, offsets=((0.06, 0, 0), (0, -0.06, 0)))
    assert not any(r.ok for r in results)
    scene.r.configure(mode="hard")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(mode="fuzzy"), "mode"),
        (dict(sigma=0.0), "sigma"),
        (dict(gamma=-1.0), "gamma"),
        (dict(faces_per_pixel=0), "faces_per_pixel"),
    ],
)
def test_bad_mode_settings(kwargs, words):
    from taichi_dr import RenderSettings
    from taichi_dr.errors import UserError

    with pytest.raises(UserError, match=words):
        RenderSettings(**kwargs)
