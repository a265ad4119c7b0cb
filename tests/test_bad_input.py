"""Bad input keeps every promise (issue 17): a one-line error naming the problem and the fix
(exit status 2, no traceback), or a documented, correct result — never a crash, a silent
NaN, lost work or litter. Each table row is one case; ``test_case_count`` prints how many
there are, so the number can only grow.

Command-line cases run in this process (``main`` returns the exit status), at tiny sizes
that share the kernels other tests compile."""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from taichi_dr import io
from taichi_dr.apps.runner import Runner
from taichi_dr.cli import main
from taichi_dr.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPHERE = str(ROOT / "assets" / "sphere.obj")
R16 = ["--resolution", "16", "16"]


def _one_error_line(capsys, argv) -> str:
    """Run ``taichi-dr argv``; assert exit 2, exactly one ``error:`` line and no traceback
    on stderr; return that line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert status == 2 and len(lines) == 1, (status, err)
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files on disk: {name: path}."""
    d = tmp_path_factory.mktemp("bad")
    out = {"dir": d}
    (d / "passwd").write_text("a file, not a folder\n")
    out["file"] = d / "passwd"
    (d / "index0.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 0 1 2\n")
    out["index0"] = d / "index0.obj"
    (d / "folder.obj").mkdir()
    out["folder"] = d / "folder.obj"
    rng = np.random.default_rng(0)
    for ext in ("obj", "stl"):  # not UTF-8: trimesh needs charset_normalizer to decode
        (d / f"garbage.{ext}").write_bytes(rng.integers(128, 256, 4000, np.uint8).tobytes())
        out[f"garbage_{ext}"] = d / f"garbage.{ext}"
    (d / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    out["damaged_png"] = d / "damaged.png"
    cams = {
        "eye_string": {"cameras": [{"eye": "0, 1, 3"}]},
        "t_two": {
            "cameras": [
                {"K": [[20, 0, 8], [0, 20, 8], [0, 0, 1]], "R": np.eye(3).tolist(), "t": [0, 3]}
            ]
        },  # fmt: skip
        "r_zero": {
            "cameras": [
                {"K": [[20, 0, 8], [0, 20, 8], [0, 0, 1]], "R": [[0] * 3] * 3, "t": [0, 0, 3]}
            ]
        },  # fmt: skip
        "k_zero": {"cameras": [{"K": [[0] * 3] * 3, "R": np.eye(3).tolist(), "t": [0, 0, 3]}]},
        "width_float": {"width": 64.7, "cameras": [{"eye": [0, 1, 3]}]},
        "not_a_dict": {"cameras": [5]},
        "fov_zero": {"cameras": [{"eye": [0, 1, 3], "fov": 0}]},
        "near_string": {"near": "0.1", "cameras": [{"eye": [0, 1, 3]}]},
        "good": {"cameras": [{"eye": [0, 1, 3]}]},
    }
    for key, data in cams.items():
        out[f"cams_{key}"] = d / f"{key}.json"
        out[f"cams_{key}"].write_text(json.dumps({"width": 16, "height": 16, **data}))
    io.save_image(d / "target.png", np.zeros((16, 16, 3)))
    out["target"] = d / "target.png"
    return out


# ------------------------------------------------------------------ command-line errors
# (id, argv without --out (a fresh folder is added unless the case names one), words)
CLI = [
    ("out-is-a-file", ["render", SPHERE, *R16, "--out", "{file}"], ["is a file", "--out"]),
    ("out-under-a-file", ["render", SPHERE, *R16, "--out", "{file}/sub"], ["output folder"]),
    ("out-not-writable", ["render", SPHERE, *R16, "--out", "/proc/self"], ["cannot write"]),
    ("fit-out-is-a-file", ["fit", "pose", "--out", "{file}"], ["is a file"]),
    ("smoke-out-is-a-file", ["smoke", "control", "--out", "{file}"], ["is a file"]),
    ("ad-out-is-a-file", ["ad", "--out", "{file}"], ["is a file"]),
    ("view-out-is-a-file", ["view", SPHERE, "--headless", "--out", "{file}"], ["is a file"]),
    ("smoke-iters-0", ["smoke", "control", "--iters", "0"], ["--iters must be at least 1"]),
    ("smoke-iters-negative", ["smoke", "control", "--iters", "-1"], ["--iters", "got -1"]),
    ("smoke-lr-0", ["smoke", "control", "--lr", "0"], ["--lr must be a positive number"]),
    ("smoke-lr-nan", ["smoke", "control", "--lr", "nan"], ["--lr"]),
    ("smoke-frame-every-0", ["smoke", "control", "--frame-every", "0"], ["--frame-every"]),
    ("render-fov-0", ["render", SPHERE, *R16, "--fov", "0"], ["fov must lie in (0, 180)"]),
    ("render-fov-nan", ["render", SPHERE, *R16, "--fov", "nan"], ["fov must be a finite"]),
    ("view-fov-0", ["view", SPHERE, "--headless", *R16, "--fov", "0"], ["fov must lie in"]),
    ("view-spin-nan", ["view", SPHERE, "--headless", *R16, "--spin", "nan"], ["--spin"]),
    ("view-azimuth-nan", ["view", SPHERE, "--headless", *R16, "--azimuth", "nan"], ["azimuth"]),
    (
        "background-nan",
        ["render", SPHERE, *R16, "--background", "nan", "0", "0"],
        ["background must be 3 finite numbers"],
    ),  # fmt: skip
    (
        "background-negative",
        ["render", SPHERE, *R16, "--background", "-1", "0", "0"],
        ["background must be 3 finite numbers ≥ 0"],
    ),  # fmt: skip
    (
        "ambient-negative",
        ["render", SPHERE, *R16, "--ambient", "-1", "0", "0"],
        ["light ambient must be ≥ 0"],
    ),  # fmt: skip
    (
        "light-colour-negative",
        ["render", SPHERE, *R16, "--light", "dir:1,0,0:-1,1,1"],
        ["light dir_color must be ≥ 0"],
    ),  # fmt: skip
    ("opacity-2", ["render", SPHERE, *R16, "--opacity", "2"], ["opacity must be in [0, 1]"]),
    ("metallic-negative", ["render", SPHERE, *R16, "--metallic", "-3"], ["metallic"]),
    ("mesh-is-a-folder", ["render", "{folder}", *R16], ["is a folder, not a mesh file"]),
    ("obj-index-0", ["render", "{index0}", *R16], ["line 6: face index 0", "start at 1"]),
    ("garbage-obj", ["render", "{garbage_obj}", *R16], ["garbage.obj", "no triangles"]),
    ("garbage-stl", ["render", "{garbage_stl}", *R16], ["garbage.stl"]),
    (
        "resolution-8192-layers",
        ["render", SPHERE, "--resolution", "512", "512", "--layers", "100000"],
        ["in 100000 layers needs about", "GiB"],
    ),  # fmt: skip
    ("fit-start-angle-nan", ["fit", "pose", "--start-angle", "nan"], ["--start-angle"]),
    (
        "fit-damaged-png-target",
        ["fit", "pose", "--target", "{damaged_png}", "--cameras", "{cams_good}"],
        ["damaged.png", "damaged or not in an image format"],
    ),  # fmt: skip
    (
        "smoke-damaged-png-target",
        ["smoke", "control", "--target", "{damaged_png}"],
        ["damaged.png", "damaged or not in an image format"],
    ),  # fmt: skip
]


# camera files: (id, file key, words)
CAMERA_FILES = [
    ("eye-string", "eye_string", ["camera 0", "eye must be 3 finite numbers"]),
    ("t-two-numbers", "t_two", ["camera 0", "t must be 3 finite numbers"]),
    ("r-all-zero", "r_zero", ["R must be a rotation matrix"]),
    ("k-all-zero", "k_zero", ["K must be", "fx, fy > 0"]),
    ("width-64.7", "width_float", ['"width" and "height" must be integers', "64.7"]),
    ("camera-not-an-object", "not_a_dict", ["camera 0", '"eye"']),
    ("fov-zero", "fov_zero", ["fov must lie in (0, 180)"]),
    ("near-string", "near_string", ['"near" must be a finite number']),
]
CLI += [
    (
        f"cameras-{name}",
        ["fit", "pose", "--target", "{target}", "--cameras", f"{{cams_{key}}}"],
        words,
    )  # fmt: skip
    for name, key, words in CAMERA_FILES
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_error(argv, words, files, tmp_path, capsys):
    argv = [str(a).format(**files) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    line = _one_error_line(capsys, argv)
    for w in words:
        assert w in line, line


# ------------------------------------------------------------------ API errors
def _fast_smoke():
    from taichi_dr.sim import Smoke, SmokeConfig

    sim = Smoke(SmokeConfig(shape=(4, 4), steps=1, dt=1e6))
    sim.set_initial(np.zeros((4, 4)), [np.ones(f.shape) for f in sim.init_velocity])
    return sim


def _substeps_unbounded():
    _fast_smoke().forward()


def _error_inside_tape():
    """``smoke --lr 1e30``: the rollout refuses (inside the tape) a flow that needs unbounded
    substeps; Taichi's own tape then ran a backward pass and hid it under an IndexError."""
    import taichi as ti

    from taichi_dr import backend

    sim = _fast_smoke()
    loss = ti.field(backend.real(), (), needs_grad=True)
    with backend.Tape(loss, clear_gradients=False):
        sim.run()


def _mesh(**changes):
    from taichi_dr.scene import Mesh, icosphere

    m = icosphere(0)
    arrays = {"vertices": m.vertices.copy(), "faces": m.faces.copy(), **changes}
    return Mesh(**arrays)


def _with_vertex(value):
    from taichi_dr.scene import icosphere

    v = icosphere(0).vertices.copy()
    v[3] = value
    return v


def _renderer(mesh=None, **settings):
    from conftest import shared_renderer

    from taichi_dr.camera import Camera
    from taichi_dr.scene import icosphere, textured_sphere

    mesh = textured_sphere(8, 16, 16) if mesh is None else mesh
    cam = Camera.look_at((0, 0, 3), fov=40, width=40, height=32)  # as test_raster's
    return shared_renderer(mesh if mesh != "plain" else icosphere(1), cam, **settings)


def _mutated_faces():
    from taichi_dr.scene import icosphere

    m = icosphere(1)
    m.faces[4, 1] = -1  # after validation: the renderer checks again
    _renderer(m)


def _camera(**changes):
    from taichi_dr.camera import Camera

    c = Camera.look_at((0, 0, 3), width=16, height=16)
    fields = {k: getattr(c, k) for k in ("view", "proj", "width", "height", "near", "far")}
    return Camera(**{**fields, **changes})


def _nan_view():
    view = np.eye(4)
    view[0, 3] = np.nan
    return _camera(view=view)


def _torch_render(**inputs):
    torch = pytest.importorskip("torch")
    from taichi_dr.torch import render

    r = _renderer()
    render(r, **{k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()})


def _check_magnitude(values, precision):
    """What the renderer checks when a mesh is uploaded (f32: |x| ≳ 1.8e19 gave NaN)."""
    from taichi_dr import backend

    backend.check_magnitude(values, "mesh vertex coordinates", precision)


def _render_settings(**kw):
    from taichi_dr.render.pipeline import RenderSettings

    RenderSettings(**kw)


def _texture_not_power_of_two():
    from taichi_dr.render.texture import Texture

    Texture(3, 5, "trilinear")


# (id, function that must raise UserError, words in the message)
API = [
    ("mesh-nan-vertex", lambda: _mesh(vertices=_with_vertex(np.nan)), ["vertex 3", "NaN"]),
    ("mesh-inf-vertex", lambda: _mesh(vertices=_with_vertex(np.inf)), ["NaN or inf"]),
    ("mesh-face-out-of-range", lambda: _mesh(faces=[[0, 1, 99]]), ["vertex index 99"]),
    ("mesh-face-float", lambda: _mesh(faces=[[0, 1, 2.5]]), ["faces must be integers"]),
    ("mesh-faces-mutated-after-validation", _mutated_faces, ["vertex index -1"]),
    ("mesh-uvs-nan", lambda: _mesh(uvs=np.full((12, 2), np.nan)), ["NaN or inf UVs"]),
    ("mesh-all-degenerate", lambda: _mesh(faces=[[0, 0, 1]]), ["no face with an area"]),
    ("renderer-given-a-path", lambda: _renderer("assets/sphere.obj"), ["taichi_dr.Mesh"]),
    (
        "vertex-colors-nan",
        lambda: _renderer("plain").set_mesh(_mesh(), colors=np.full((12, 3), np.nan)),
        ["vertex colors", "NaN"],
    ),  # fmt: skip
    ("texture-nan", lambda: _renderer().set_texture(np.full((4, 4, 3), np.nan)), ["NaN"]),
    ("texture-not-power-of-two", _texture_not_power_of_two, ["--texture-filter bilinear"]),
    ("shininess-negative", lambda: _renderer().material.set(shininess=-1), ["shininess"]),
    ("roughness-above-1", lambda: _renderer().material.set(roughness=3), ["roughness"]),
    (
        "light-colour-negative",
        lambda: _renderer().lights.set(directional=[((0, 1, 0), (-1, 1, 1))]),
        ["light dir_color must be ≥ 0"],
    ),  # fmt: skip
    ("settings-eps-negative", lambda: _render_settings(eps=-1), ["eps", "[0, 1)"]),
    ("settings-sigma-inf", lambda: _render_settings(sigma=np.inf), ["sigma"]),
    (
        "settings-background-nan",
        lambda: _render_settings(background=(np.nan, 0, 0)),
        ["background must be 3 finite numbers"],
    ),  # fmt: skip
    ("settings-texture-filter", lambda: _render_settings(texture_filter="cubic"), ["cubic"]),
    ("camera-nan-view", _nan_view, ["camera view matrix must be 4x4 finite numbers"]),
    ("camera-singular-view", lambda: _camera(view=np.zeros((4, 4))), ["singular"]),
    ("camera-width-64.7", lambda: _camera(width=64.7), ["resolution must be two positive"]),
    ("camera-eye-string", lambda: _camera_look_at(eye="0, 0, 3"), ["eye must be 3 finite"]),
    ("opencv-r-zero", lambda: _opencv(R=np.zeros((3, 3))), ["R must be a rotation matrix"]),
    ("opencv-t-two", lambda: _opencv(t=[0, 3]), ["t must be 3 finite numbers"]),
    ("torch-fov-0", lambda: _torch_render(fov=0.0), ["fov must lie in (0, 180)"]),
    ("torch-fov-200", lambda: _torch_render(fov=200.0), ["fov must lie in (0, 180)"]),
    ("torch-shininess-negative", lambda: _torch_render(shininess=-2.0), ["shininess"]),
    (
        "huge-coordinates-f64",
        lambda: _mesh(vertices=_with_vertex(1e200)),
        ["reach 1e+200", "f64 arithmetic overflows", "rescale"],
    ),  # fmt: skip
    (
        "huge-coordinates-f32",
        lambda: _check_magnitude(_with_vertex(2e19), "f32"),
        ["reach 2e+19", "use precision f64"],
    ),  # fmt: skip
    ("smoke-dt-1e6-substeps", _substeps_unbounded, ["substeps per step", "lower dt"]),
    ("smoke-lr-1e30-error-inside-tape", _error_inside_tape, ["substeps per step"]),
]


def _camera_look_at(**kw):
    from taichi_dr.camera import Camera

    return Camera.look_at(**{"eye": (0, 0, 3), "width": 16, "height": 16, **kw})


def _opencv(**kw):
    from taichi_dr.camera import from_opencv

    K = [[20, 0, 8], [0, 20, 8], [0, 0, 1]]
    return from_opencv(**{"K": K, "R": np.eye(3), "t": [0, 0, 3], "width": 16, "height": 16, **kw})


@pytest.mark.parametrize("fn, words", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_error(fn, words):
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


# ------------------------------------------------------------------ triangle ids
MODES = ("hard", "antialias", "nmr", "soft")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """An OBJ file whose first faces are an exact duplicate, a rotated duplicate, a face
    with a repeated index and a zero-area (collinear) face, then an icosphere's faces;
    returns (path, the file's faces, the clean mesh: the icosphere alone)."""
    from taichi_dr.scene import Mesh, icosphere

    sphere = icosphere(1)
    f = sphere.faces
    a, b = f[2][0], f[2][1]
    v = np.vstack([sphere.vertices, (sphere.vertices[a] + sphere.vertices[b]) / 2])
    mid = len(v) - 1
    first = [f[5], np.roll(f[7], 1), [f[3][0], f[3][0], f[3][1]], [a, b, mid]]
    faces = np.vstack([first, f])
    path = tmp_path_factory.mktemp("dirty") / "dirty.obj"
    lines = [f"v {x:.17g} {y:.17g} {z:.17g}" for x, y, z in v]
    lines += ["f " + " ".join(str(i + 1) for i in face) for face in faces]
    path.write_text("\n".join(lines) + "\n")
    return path, faces, Mesh(v, f, name="clean")


@pytest.mark.parametrize("mode", MODES)
def test_triangle_ids_index_the_input_faces(mode, dirty):
    """A duplicate renders like its first (lower-id) copy and a degenerate face covers
    nothing: image, gradients and every AOV equal the clean mesh's, ids index the file."""
    from conftest import shared_renderer

    from taichi_dr import backend, losses
    from taichi_dr.camera import Camera
    from taichi_dr.render import arrays
    from taichi_dr.scene import load_mesh

    path, faces, clean = dirty
    with pytest.warns(UserWarning, match="4 of 84 faces are degenerate or duplicates"):
        mesh = load_mesh(path)
    np.testing.assert_array_equal(mesh.faces, faces)
    cam = Camera.look_at((0.3, 0.5, 2.8), fov=40, width=40, height=32)
    results = []
    for m in (mesh, clean):
        r = shared_renderer(m, cam, mode=mode)
        out = r.render()
        grad = None
        if mode in ("antialias", "soft"):  # the modes whose gradients cross silhouettes
            loss = losses.loss_array()
            target = arrays.empty(32 * 40, 3)
            with backend.Tape(loss):
                r.shade()
                losses.mse_loss(r.image, target, loss)
            grad = r.mesh.positions.grad.to_numpy()[: m.num_vertices]
        results.append((out, grad))
    (got, grad), (want, want_grad) = results
    expect = np.where(want.triangle_id >= 0, want.triangle_id + 4, -1)
    expect[want.triangle_id == 5] = 0  # the exact duplicate of face 5 comes first
    expect[want.triangle_id == 7] = 1  # the rotated duplicate of face 7 too
    np.testing.assert_array_equal(got.triangle_id, expect)
    assert {0, 1} <= set(np.unique(got.triangle_id))  # the test covers both
    rotated = (got.triangle_id == 1)[..., None]  # barycentrics follow the face's corners
    bary = np.where(rotated, np.roll(want.barycentric, 1, axis=-1), want.barycentric)
    np.testing.assert_allclose(got.barycentric, bary, atol=1e-12)
    for name in ("image", "alpha", "depth", "normal"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-12)
    if grad is not None:
        np.testing.assert_allclose(grad, want_grad, atol=1e-12)
        assert np.abs(want_grad).max() > 0


def test_fitted_mesh_keeps_the_input_faces(dirty, tmp_path, recwarn):
    path, faces, _ = dirty
    out = tmp_path / "fit"
    argv = ["fit", "pose", "--headless", "--resolution", "32", "--iters", "1", "--views", "1"]
    assert main([*argv, "--target-mesh", str(path), "--out", str(out)]) == 0
    written = [ln for ln in (out / "mesh.obj").read_text().splitlines() if ln.startswith("f ")]
    ids = np.array([[int(c.split("/")[0]) - 1 for c in ln.split()[1:]] for ln in written])
    np.testing.assert_array_equal(ids, faces)


def test_cli_reports_a_user_error_hidden_by_a_later_exception(monkeypatch, capsys, tmp_path):
    """Code outside the package (Taichi's tape exit) may fail again while our error
    propagates; the command still ends with our one line."""
    from taichi_dr.commands import ad

    def run(args):
        try:
            raise UserError("the real problem; the fix")
        except UserError:
            [][0]  # an IndexError raised while handling it

    monkeypatch.setattr(ad, "run", run)
    line = _one_error_line(capsys, ["ad", "--out", tmp_path])
    assert line == "error: the real problem; the fix"


# ------------------------------------------------------------------ degenerate scenes
def _edge_on(pos, r):
    """Every face flattened into the plane through the object centre and the eye: all of
    them are seen exactly edge-on."""
    eye = r.camera.eye
    n = np.cross(eye, (0.0, 1.0, 0.0))
    n /= np.linalg.norm(n)
    return pos - np.outer(pos @ n, n)


def _zero_area(pos, r):
    out = pos.copy()
    out[1] = out[0]  # a collapsed edge: zero-area faces
    out[5] = out[4] + (out[6] - out[4]) * 0.5  # a vertex on its neighbours' line
    return out


def _at_eye(pos, r):
    """The vertex nearest the camera moved exactly onto the camera centre (clip w = 0)."""
    out = pos.copy()
    out[np.argmax(pos @ r.camera.eye)] = r.camera.eye
    assert (r.camera.view @ [*r.camera.eye, 1])[2] == 0  # exactly
    return out


# (positions from the scene's positions, camera translation in eye space)
DEGENERATE = {
    "camera-inside-mesh": (None, (0, 0, 2.6)),
    "near-plane-crossing": (None, (0, 0, 2.1)),
    "behind-camera": (None, (0, 0, 6.0)),
    "edge-on": (_edge_on, (0, 0, 0)),
    "zero-area": (_zero_area, (0, 0, 0)),
    "coincident-vertices": (lambda pos, r: np.broadcast_to(pos[0], pos.shape), (0, 0, 0)),
    "vertex-at-camera-centre": (_at_eye, (0, 0, 0)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_scene_is_finite(case, mode, gradcheck_scene):
    """No NaN or inf in the image, the coverage or any gradient (positions, camera
    translation, fov) of the degenerate-scene set, in every visibility mode. The camera
    looks down −z from (0, 0, 3), so a vertex put on it has clip w = 0 exactly."""
    from taichi_dr.camera import Camera
    from taichi_dr.checks import array_parameter, packed_parameter

    scene = gradcheck_scene
    r = scene.r
    camera, pos = r.camera, r.mesh.positions.to_numpy()
    move, translation = DEGENERATE[case]
    try:
        r.configure(mode=mode)
        r.set_camera(Camera.look_at((0, 0, 3), (0, 0, 0), (0, 1, 0), 40, 24, 24, 0.5, 10))
        if move is not None:
            r.mesh.positions.from_numpy(move(pos.astype(np.float64), r).astype(pos.dtype))
        r.vertex.params.set(camera_translation=translation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # soft mode warns about near-plane crossings
            outputs = {"positions": scene.gradient(array_parameter(r.mesh.positions))}
        outputs["image"] = r.image.to_numpy()
        outputs["alpha"] = r.alpha.to_numpy()
        for name in ("camera_translation", "fov"):
            outputs[name] = packed_parameter(r.vertex.params, name).grad()
        bad = [name for name, a in outputs.items() if not np.all(np.isfinite(a))]
        assert not bad, f"NaN/inf in {bad}"
    finally:
        r.mesh.positions.from_numpy(pos)
        r.set_camera(camera)
        r.configure(mode="hard")


def test_soft_mode_warns_about_faces_crossing_the_near_plane():
    """A floor that runs from far in front of the camera to behind it: the hard
    rasterizer clips its two faces at the near plane and draws the visible part; soft mode
    does not draw a face with a vertex in front of the near plane (README, "Soft
    rasterizer"), and says so once per renderer."""
    from taichi_dr.scene import Mesh

    floor = Mesh(
        [[-1, -0.3, -5], [1, -0.3, -5], [1, -0.3, 4], [-1, -0.3, 4]], [[0, 1, 2], [0, 2, 3]]
    )
    hard = _renderer(floor, mode="hard").render().mask
    assert hard.sum() > 100
    r = _renderer(floor, mode="soft")
    with pytest.warns(UserWarning, match="drops the 2 faces that cross the camera's near plane"):
        r.render()
    assert r.alpha.to_numpy().max() < 1e-6  # as documented: nothing drawn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.render()  # once per renderer
    facing = Mesh([[-1, -1, 0], [1, -1, 0], [0, 1, 0]], [[0, 1, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _renderer(facing, mode="soft").render().alpha.max() > 0.5  # no crossing: silent


# ------------------------------------------------------------------ reproducible fits
def test_fit_repeats_bit_for_bit_with_one_seed(tmp_path):
    """``taichi-dr fit`` is deterministic by default (CPU kernels on one thread, so float
    atomics add in one order): two runs with one seed give identical losses and metrics.
    In a fresh process, because this one already runs Taichi on all threads."""
    code = (
        "import sys, taichi as ti\n"
        "from taichi_dr.cli import main\n"
        "for k in '12':\n"
        "    assert main(['fit', 'material', '--headless', '--views', '1', '--iters', '3',\n"
        "                 '--resolution', '32', '--seed', '5', '--out', sys.argv[1] + k]) == 0\n"
        "print('threads', ti.lang.impl.current_cfg().cpu_max_num_threads)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "threads 1" in res.stdout
    first, second = (json.loads((tmp_path / f"run{k}" / "metrics.json").read_text()) for k in "12")
    assert first["settings"]["deterministic"] is True
    assert first["losses"] == second["losses"] and first["iterations"] == second["iterations"]
    assert first["final"] == second["final"]


# ------------------------------------------------------------------ archs
def test_arch_probe_that_crashes_is_an_error(monkeypatch, capsys, tmp_path):
    """Taichi's GPU probe can segfault (OpenGL without drivers: exit 139, no message); the
    probe runs in a child process, so a crash there is an error here."""
    from taichi_dr import backend

    monkeypatch.setattr(backend, "_probed", {})
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(backend, "_PROBE", crash)
    for arch in ("gpu", "vulkan"):
        line = _one_error_line(capsys, ["render", SPHERE, "--arch", arch, "--out", tmp_path])
        assert f"arch {arch!r} is not available" in line and "(available: cpu)" in line


# ------------------------------------------------------------------ files read correctly
def _textured_obj(folder: Path, mtl: str) -> Path:
    (folder / "t.mtl").write_text(mtl)
    text = "mtllib t.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
    (folder / "t.obj").write_text(text + "usemtl m\nf 1/1 2/2 3/3\n")
    return folder / "t.obj"


def test_16_bit_texture_decodes_to_its_grey_level(tmp_path):
    """A 16-bit grey PNG (PIL mode I;16) was clipped to white (mean 0.997 for 0.306)."""
    from PIL import Image

    from taichi_dr.scene import load_mesh

    grey = np.full((4, 4), round(0.306 * 65535), np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    mesh = load_mesh(_textured_obj(tmp_path, "newmtl m\nmap_Kd grey16.png\n"))
    expect = io.srgb_to_linear(grey[0, 0] / 65535.0)  # 0.0762
    np.testing.assert_allclose(mesh.texture, expect, rtol=1e-6)
    np.testing.assert_allclose(io.load_image(tmp_path / "grey16.png")[..., 0], expect, rtol=1e-6)


@pytest.mark.parametrize(
    "mtl, words",
    [
        ("newmtl m\nmap_Kd missing.png\n", "'missing.png' (map_Kd in t.mtl) does not exist"),
        ("newmtl m\nmap_Kd damaged.png\n", "'damaged.png' (map_Kd in t.mtl) is not a readable"),
    ],
    ids=["missing", "damaged"],
)
def test_unreadable_map_kd_is_reported(mtl, words, tmp_path):
    from taichi_dr.scene import load_mesh

    (tmp_path / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.warns(UserWarning, match=words.replace("(", r"\(").replace(")", r"\)")):
        mesh = load_mesh(_textured_obj(tmp_path, mtl))
    assert mesh.texture is None


def test_renderer_accepts_a_trimesh():
    import trimesh

    from taichi_dr.scene import icosphere

    m = icosphere(1)
    want = _renderer("plain").render()
    got = _renderer(trimesh.Trimesh(m.vertices, m.faces, process=False)).render()
    np.testing.assert_allclose(got.image, want.image, atol=1e-12)
    np.testing.assert_array_equal(got.triangle_id, want.triangle_id)


# ------------------------------------------------------------------ memory
def test_render_memory_is_estimated_before_allocating(monkeypatch, capsys, tmp_path):
    """The estimate bounds what a renderer allocates (values and gradients; within a
    factor 2), and a render that cannot fit is refused with it."""
    import taichi as ti
    from taichi.lang._ndarray import Ndarray

    from taichi_dr import memory
    from taichi_dr.camera import Camera
    from taichi_dr.render.pipeline import Renderer, RenderSettings
    from taichi_dr.scene import icosphere

    def allocated(root, seen=None):
        seen = set() if seen is None else seen
        if id(root) in seen:
            return 0
        seen.add(id(root))
        if isinstance(root, Ndarray):
            element = getattr(root.element_type, "n", 1)
            size = 8 if root.dtype in (ti.f64, ti.i64, ti.u64) else 4
            return int(np.prod(root.shape)) * element * size * (1 + (root.grad is not None))
        if isinstance(root, list | tuple):
            return sum(allocated(x, seen) for x in root)
        if isinstance(root, dict):
            return sum(allocated(x, seen) for x in root.values())
        if type(root).__module__.startswith("taichi_dr") and hasattr(root, "__dict__"):
            return sum(allocated(x, seen) for x in vars(root).values())
        return 0

    def bound(r, estimate):
        real = allocated(r)
        assert real <= estimate <= 2 * real, (real, estimate)

    m = icosphere(2)
    cameras = [Camera.look_at((0, 0, 3), width=40, height=32)] * 2
    for mode, layers in (("hard", 1), ("hard", 3), ("antialias", 1), ("soft", 1)):
        r = Renderer(m, cameras, RenderSettings(mode=mode, layers=layers))
        r.render()
        need = memory.render_bytes(2 * 40 * 32, m.num_faces, m.num_vertices, mode, layers,
                                   r.settings.faces_per_pixel, views=2)  # fmt: skip
        bound(r, need)
    monkeypatch.setattr(memory, "available_bytes", lambda: 8 * 2**30)
    line = _one_error_line(capsys, ["render", SPHERE, "--resolution", "8192", "8192", "--out",
                                    tmp_path])  # fmt: skip
    assert "rendering 8192x8192 pixels needs about" in line and "8.0 GiB are available" in line
    line = _one_error_line(capsys, ["render", SPHERE, "--layers", "100000", "--out", tmp_path])
    assert "in 100000 layers needs about" in line and "lower the resolution or the layers" in line
    r = Renderer(m, cameras[0])
    with pytest.raises(UserError, match="in 1000000 layers needs about"):
        r.configure(layers=1_000_000)
    assert r.settings.layers == 1 and r.render().image.shape == (32, 40, 3)  # unchanged


# ------------------------------------------------------------------ output folders
def test_stale_temporary_files_are_removed(tmp_path):
    """Files a killed run left (its process is gone) go; a live writer's and others stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".tmp-{dead}-abcd.png"
    foreign = tmp_path / ".tmp-foreign.png"  # not written by atomic_write
    live = tmp_path / f".tmp-{os.getpid()}-efgh.npz"
    keep = tmp_path / "image.png"
    for p in (stale, foreign, live, keep):
        p.write_bytes(b"x")
    io.prepare_output(tmp_path)
    assert not stale.exists() and not foreign.exists()
    assert live.exists() and keep.exists()


# ------------------------------------------------------------------ checkpoints
class _Counter:
    """A runner application: x += 1 per step; checkpointable."""

    def __init__(self):
        self.x = np.zeros(3)

    def step(self, it):
        self.x += 1
        return {"loss": float(10 - it)}

    def get(self):
        return {"x": self.x.copy()}

    def set(self, arrays):
        self.x = np.array(arrays["x"])


def _runner(out, resume=False):
    return Runner(out, "counter", {}, headless=True, checkpoint_every=2, resume=resume)


def _damage(path, how):
    good = dict(np.load(path))
    if how == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no-app":
        good.pop("app")
        np.savez(path, **good)
    elif how == "pickled":
        np.savez(path, **{**good, "losses": np.array([{"a": 1}], dtype=object)})
    elif how == "nan-state":
        np.savez(path, **{**good, "state/x": np.full(3, np.nan)})
    elif how == "iteration-500":
        np.savez(path, **{**good, "iteration": np.array(500)})
    elif how == "iteration-negative":
        np.savez(path, **{**good, "iteration": np.array(-5)})
    elif how == "iteration-float":
        np.savez(path, **{**good, "iteration": np.array(2.5)})


CHECKPOINTS = [
    ("garbage", "damaged"),
    ("truncated", "damaged"),
    ("empty", "damaged"),
    ("no-app", "damaged"),
    ("pickled", "damaged"),
    ("nan-state", "NaN or inf"),
    ("iteration-500", "past the 4 asked for"),
    ("iteration-negative", "damaged"),
    ("iteration-float", "damaged"),
]


@pytest.mark.parametrize("how, words", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_bad_checkpoint(how, words, tmp_path):
    _runner(tmp_path).run(_Counter().step, 2, state=_Counter())
    path = tmp_path / "checkpoint.npz"
    _damage(path, how)
    app = _Counter()
    with pytest.raises(UserError) as info:
        _runner(tmp_path, resume=True).run(app.step, 4, state=app)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message
    assert np.all(app.x == 0)  # nothing was loaded


def test_resume_keeps_wall_time(tmp_path):
    """After --resume the wall time covers both parts (it described the last one only)."""
    import time

    def slow_step(it):
        time.sleep(0.1)
        return app.step(it)

    app = _Counter()
    first = _runner(tmp_path)
    first.run(slow_step, 2, state=app)
    resumed = _runner(tmp_path, resume=True)
    resumed.run(slow_step, 4, state=app)
    assert first.wall_time >= 0.2 and resumed.wall_time >= 0.38  # 0.2 s each part
    assert [r["iteration"] for r in resumed.records] == [0, 1, 2, 3]


def test_ctrl_c_stops_after_the_iteration_with_a_checkpoint(tmp_path):
    app = _Counter()

    def step(it):
        if it == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        return app.step(it)

    r = Runner(tmp_path, "counter", {}, headless=True, checkpoint_every=10)
    records = r.run(step, 10, state=app)
    assert r.interrupted and [rec["iteration"] for rec in records] == [0, 1, 2]
    with np.load(tmp_path / "checkpoint.npz") as data:
        assert int(data["iteration"]) == 3 and np.all(data["state/x"] == 3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    again = _Counter()
    _runner(tmp_path, resume=True).run(again.step, 5, state=again)
    assert np.all(again.x == 5)


def test_fit_ctrl_c_and_resume(tmp_path, monkeypatch):
    """Ctrl-C in a fit: exit 130 after the current iteration, with a checkpoint there and
    the usual outputs; --resume then reports the whole run (loss_start of iteration 0,
    wall time of both parts)."""
    from taichi_dr.apps import fit

    out = tmp_path / "fit"
    argv = ["fit", "pose", "--headless", "--resolution", "32", "--views", "1", "--out", str(out)]
    step = fit.Fit.step

    def interrupted_step(self, it):
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, it)

    monkeypatch.setattr(fit.Fit, "step", interrupted_step)
    assert main([*argv, "--iters", "4", "--checkpoint-every", "10"]) == 130
    first = json.loads((out / "metrics.json").read_text())
    assert len(first["losses"]) == 2 and (out / "params.json").is_file()
    with np.load(out / "checkpoint.npz") as data:
        assert int(data["iteration"]) == 2
    monkeypatch.setattr(fit.Fit, "step", step)
    assert main([*argv, "--iters", "4", "--resume"]) == 0
    whole = json.loads((out / "metrics.json").read_text())
    assert whole["losses"][:2] == first["losses"] and len(whole["losses"]) == 4
    assert whole["final"]["loss_start"] == first["losses"][0]
    assert whole["wall_time_s"] > first["wall_time_s"]


def test_case_count():
    """Every test of this file is a case; parametrized ones count each parameter set."""
    import math

    n = sum(
        math.prod(len(m.args[1]) for m in getattr(fn, "pytestmark", []) if m.name == "parametrize")
        for name, fn in globals().items()
        if name.startswith("test_") and name != "test_case_count"
    )
    print(f"bad-input cases: {n}")
    assert n >= 125  # add cases, never remove them
