"""``taichi-dr fit``: each application at 32² for a few iterations (loss and metric improve),
outputs, --resume, fitting to image files, bad input, and the fit module's own kernels
(blur, vertex normals, whole-pipeline gradients) against independent references."""

import importlib.util
import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import taichi as ti

from taichi_dr import UserError, io, scene
from taichi_dr.apps import fit, inverse
from taichi_dr.cli import main
from taichi_dr.render import arrays
from taichi_dr.render.arrays import Frame

ROOT = Path(__file__).resolve().parents[1]
RES = 32  # every fit test uses this resolution: one shared renderer, compiled once
TINY = ["--headless", "--resolution", str(RES), "--checkpoint-every", "2", "--frame-every", "2"]


def _run(app, out, *extra):
    assert main(["fit", app, *TINY, "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def _options(views, shading=None):
    return inverse.FitOptions(resolution=RES, views=views, precondition=True, shading=shading)


def _improved(data, metric, better="lower"):
    first, last = data["iterations"][0][metric], data["final"][metric]
    return last < first if better == "lower" else last > first


# --------------------------------------------------------------------------- applications


def test_pose_outputs_and_resume(tmp_path):
    out = tmp_path / "pose"
    data = _run("pose", out, "--iters", "10", "--no-coarse-to-fine")
    assert data["app"] == "fit-pose" and len(data["losses"]) == 10
    losses = data["losses"]
    assert min(losses[1:]) < 0.95 * losses[0]  # the loss falls by at least 5 % (32², 30°)
    assert _improved(data, "rotation_error_deg")
    assert data["iterations"][0]["rotation_error_deg"] == pytest.approx(30.0, abs=1.0)
    params = json.loads((out / "params.json").read_text())
    assert set(params) == {"pose.rotation", "pose.translation"}
    assert {"start", "final", "truth"} <= set(params["pose.rotation"])
    for name in (
        "loss.png",
        "progress.gif",
        "dashboard.png",
        "mesh.obj",
        "target.png",
        "final.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert scene.load_mesh(out / "mesh.obj").num_faces > 0
    assert io.load_image(out / "final.png").shape == (RES, RES, 3)
    # resume continues from the checkpoint at iteration 10
    assert main(["fit", "pose", *TINY, "--out", str(out), "--iters", "12", "--resume",
                 "--no-coarse-to-fine"]) == 0  # fmt: skip
    resumed = json.loads((out / "metrics.json").read_text())
    assert len(resumed["losses"]) == 12
    assert resumed["losses"][:10] == pytest.approx(losses)
    assert [r["iteration"] for r in resumed["iterations"]] == list(range(12))
    assert resumed["losses"][10] < losses[0]  # continued from the fitted pose, not the start


@pytest.mark.parametrize(
    "app, iters, factor, metric, better, extra",
    [  # at 32², 2 views, the loss falls below factor × its start within iters iterations
        ("material", 8, 0.8, "roughness_error_rel", "lower", ()),
        ("material", 8, 0.8, "shininess_error_rel", "lower", ("--shading", "phong")),
        ("lighting", 6, 0.9, "point_error_rel", "lower", ()),  # every light slot shaded
        ("joint", 8, 0.98, "base_color_error_rel", "lower", ()),
        ("texture", 6, 0.6, "psnr_visible", "higher", ()),
    ],
)
def test_application_improves(tmp_path, app, iters, factor, metric, better, extra):
    data = _run(app, tmp_path / app, "--iters", str(iters), "--views", "2", *extra)
    losses = data["losses"]
    assert min(losses[1:]) < factor * losses[0], losses
    assert _improved(data, metric, better)
    assert set(data["final"]["goals"]) <= set(data["final"])


def test_geometry_soft_improves(tmp_path):
    # fixed σ: with annealing the loss changes definition between iterations
    data = _run("geometry", tmp_path / "g", "--iters", "6", "--views", "2", "--no-sigma-anneal")
    losses = data["losses"]
    assert data["settings"]["mode"] == "soft"
    assert min(losses[1:]) < 0.95 * losses[0], losses
    assert data["final"]["iou"] > data["iterations"][0]["iou"]
    mesh = scene.load_mesh(tmp_path / "g" / "mesh.obj")
    assert mesh.num_vertices == scene.icosphere(4).num_vertices


def test_fit_to_image_files(tmp_path):
    """Targets from files: render the pose app's target, save it as RGBA PNG with a
    look-at camera in the JSON format, and fit to it."""
    app = inverse.build("pose", _options(1))
    view = app.problem.views[0]
    rgba = np.concatenate([view.target, view.alpha[..., None]], axis=2)
    io.save_image(tmp_path / "t.png", rgba)
    eye = view.camera.eye.tolist()
    cams = {"width": RES, "height": RES, "cameras": [{"eye": eye, "fov": inverse.FOV}]}
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    out = tmp_path / "o"
    data = _run("pose", out, "--iters", "8", "--target", str(tmp_path / "t.png"),
                "--cameras", str(tmp_path / "cams.json"), "--no-coarse-to-fine")  # fmt: skip
    assert "rotation_error_deg" not in data["final"]  # no ground truth for real targets
    assert min(data["losses"][1:]) < 0.95 * data["losses"][0]


def test_demo_wrapper(tmp_path):
    spec = importlib.util.spec_from_file_location("fit_material", ROOT / "demos/fit_material.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "d"
    assert module.main([*TINY, "--iters", "1", "--views", "1", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["app"] == "fit-material"


def test_gallery_script(tmp_path):
    spec = importlib.util.spec_from_file_location("gallery", ROOT / "demos/gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    img = tmp_path / "img"
    argv = ["--apps", "material_phong", "--out", str(tmp_path / "runs"),
            "--img-dir", str(img), "--resolution", str(RES), "--iters", "3", "--views", "1",
            "--frame-every", "1"]  # fmt: skip
    assert module.main(argv) == 0
    frames = iio.imread(img / "fit_material_phong.gif", index=None)
    assert frames.shape == (3, module.PANEL_HEIGHT, 3 * module.PANEL_HEIGHT, 3)
    assert iio.imread(img / "fit_dashboard.png").shape == (192, 288, 3)
    table = (tmp_path / "runs" / "gallery.md").read_text()
    assert "| material_phong | 32², 1, 3 | base_color_error_rel" in table


# --------------------------------------------------------------------------- bad input


def _error(capsys, argv):
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, lines  # one line (progress bars may precede it)
    return lines[0]


def test_bad_counts(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    assert "--views must be at least 1" in _error(capsys, ["fit", "pose", "--views", "0", *out])
    assert "--iters must be at least 1" in _error(capsys, ["fit", "pose", "--iters", "0", *out])
    assert "give both" in _error(capsys, ["fit", "pose", "--target", "x.png", *out])
    assert "--shading applies to fit material only" in _error(
        capsys, ["fit", "pose", "--shading", "phong", *out]
    )


def test_bad_targets(capsys, tmp_path):
    cams = tmp_path / "cams.json"
    cams.write_text(json.dumps({"width": 8, "height": 8, "cameras": [{"eye": [0, 0, 3]}]}))
    base = ["fit", "pose", "--headless", "--out", str(tmp_path / "o"), "--cameras", str(cams)]
    io.save_image(tmp_path / "big.png", np.zeros((9, 8, 3)))
    assert "is 8x9 pixels but its camera is 8x8" in _error(
        capsys, [*base, "--target", str(tmp_path / "big.png")]
    )
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 2), np.uint8), "LA").save(tmp_path / "la.png")
    assert "has 2 channels" in _error(capsys, [*base, "--target", str(tmp_path / "la.png")])
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert "cannot read image" in _error(capsys, [*base, "--target", str(tmp_path / "junk.png")])
    two = [str(tmp_path / "big.png")] * 2
    assert "2 target images but 1 cameras" in _error(capsys, [*base, "--target", *two])
    (tmp_path / "bad.json").write_text("{")
    base[-1] = str(tmp_path / "bad.json")
    assert "not valid JSON" in _error(capsys, [*base, "--target", two[0]])


def test_bad_target_mesh(capsys, tmp_path):
    (tmp_path / "m.obj").write_text("this is not a mesh\n")
    err = _error(capsys, ["fit", "pose", "--target-mesh", str(tmp_path / "m.obj"),
                          "--out", str(tmp_path)])  # fmt: skip
    assert "m.obj" in err
    err = _error(capsys, ["fit", "pose", "--target-mesh", str(tmp_path / "none.obj"),
                          "--out", str(tmp_path)])  # fmt: skip
    assert "none.obj" in err


def test_resume_other_application(capsys, tmp_path):
    out = tmp_path / "r"
    _run("material", out, "--iters", "2", "--views", "1")
    err = _error(capsys, ["fit", "lighting", *TINY, "--views", "1", "--iters", "3",
                          "--out", str(out), "--resume"])  # fmt: skip
    assert "belongs to 'fit-material'" in err
    assert (out / "checkpoint.npz").is_file()  # the failed resume keeps the checkpoint


# --------------------------------------------------------------------------- the fit module


def test_gaussian_blur_matches_scipy_and_is_linear():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    H, W = 12, 10
    blur = fit.GaussianBlur(Frame(2, H, W), max_radius=8)  # two views, blurred apart
    blur.set_sigma(2.0)  # taps out to 6 px: scipy's truncate=3 gives the same radius
    img = rng.random((2, H, W, 3))
    x = arrays.from_numpy(img.reshape(-1, 3), grad=True)
    blur.forward(x)
    ref = np.stack(
        [
            np.stack(
                [
                    gaussian_filter(img[b, ..., c], 2.0, mode="nearest", truncate=3.0)
                    for c in range(3)
                ],
                -1,
            )
            for b in range(2)
        ]
    )
    assert np.abs(blur.out.to_numpy().reshape(2, H, W, 3) - ref).max() < 1e-12
    # gradient of <w, blur(x)> is blurᵀ w: compare with the explicit matrix
    w = rng.random((2 * H * W, 3))
    loss = ti.ndarray(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def dot(wf: ti.types.ndarray(), out: arrays.Vec3, loss: ti.types.ndarray()):
        for i in range(out.shape[0]):
            for c in ti.static(range(3)):
                loss[None] += wf[i, c] * out[i][c]

    with ti.ad.Tape(loss):
        blur.forward(x)
        dot(w, blur.out, loss)
    M = np.zeros((H * W, H * W))
    for k in range(H * W):
        e = np.zeros(H * W)
        e[k] = 1
        M[:, k] = gaussian_filter(e.reshape(H, W), 2.0, mode="nearest", truncate=3.0).ravel()
    expected = np.stack([M.T @ wb for wb in w.reshape(2, H * W, 3)])
    assert np.abs(x.grad.to_numpy().reshape(2, H * W, 3) - expected).max() < 1e-12


def test_recompute_normals_match_numpy_and_gradient():
    from taichi_dr.render.mesh import MeshBuffers

    mesh = scene.blob(1, seed=3)
    buf = MeshBuffers()
    buf.upload(mesh)
    fit.recompute_normals(buf)
    n = buf.normals.to_numpy()
    ref = scene.vertex_normals(mesh.vertices, mesh.faces)
    unit = n / np.linalg.norm(n, axis=1, keepdims=True)
    assert np.abs(unit - ref).max() < 1e-12
    # d/dx of Σ w·n (unnormalised area-weighted normals) against central differences
    rng = np.random.default_rng(1)
    w = rng.normal(size=n.shape)
    loss = ti.ndarray(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def dot(wf: ti.types.ndarray(), normals: arrays.Vec3, loss: ti.types.ndarray()):
        for i in range(normals.shape[0]):
            for c in ti.static(range(3)):
                loss[None] += wf[i, c] * normals[i][c]

    with ti.ad.Tape(loss):
        fit.recompute_normals(buf)
        dot(w, buf.normals, loss)
    grad = buf.positions.grad.to_numpy()

    def f(v):
        fn = np.cross(
            v[mesh.faces[:, 1]] - v[mesh.faces[:, 0]], v[mesh.faces[:, 2]] - v[mesh.faces[:, 0]]
        )
        acc = np.zeros_like(v)
        for k in range(3):
            np.add.at(acc, mesh.faces[:, k], fn)
        return (w * acc).sum()

    d = rng.normal(size=n.shape)
    h = 1e-6
    fd = (f(mesh.vertices + h * d) - f(mesh.vertices - h * d)) / (2 * h)
    assert (grad * d).sum() == pytest.approx(fd, rel=1e-7)


@pytest.mark.parametrize(
    "shading, names",
    [
        ("ggx", ("material.roughness", "material.metallic")),
        ("phong", ("material.specular", "material.shininess")),  # shininess: log-stepped
        ("blinn-phong", ("material.specular", "material.shininess")),
    ],
)
def test_material_gradients_match_central_differences(shading, names):
    """The whole batched iteration (masters written into every view, rasterize, shade,
    loss, gradients gathered back) against central differences of the loss in float64
    (with respect to the stored values: log shininess)."""
    app = inverse.build("material", _options(2, shading))
    f = fit.Fit(app.problem, 10)
    f.evaluate()
    for name in names:
        m = f.masters[name].value
        x0 = m.to_numpy()
        g = m.grad.to_numpy().copy()
        vals = []
        for h in (1e-6, -1e-6):
            m.from_numpy(x0 + h)
            vals.append(f.evaluate())
        m.from_numpy(x0)
        assert float(g[0]) == pytest.approx((vals[0] - vals[1]) / 2e-6, rel=1e-5), name


def test_parameter_names_in_the_fields_words():
    """Every per-view name reaches the view parameters, material and lights names reach
    theirs, and an unknown name is refused with the list of names."""
    r = inverse.build("pose", _options(1)).problem.renderer
    for name, attr in fit.VIEW.items():
        assert fit.packed_of(r, name) == (r.vertex.params, attr)
    assert fit.packed_of(r, "material.roughness") == (r.material, "roughness")
    assert fit.packed_of(r, "lights.sh") == (r.lights, "sh")
    assert fit.grad_groups(["pose.rotation", "camera.fov", "vertices"]) in {
        ("camera", "positions"),
        ("positions", "camera"),
    }
    with pytest.raises(UserError, match="camera.fov"):
        fit.packed_of(r, "vertex.fov")


def test_metrics_against_closed_forms():
    rng = np.random.default_rng(0)
    r = np.array([0.3, -0.2, 0.5])
    assert inverse.rotation_error_deg(inverse.perturb_rotation(r, 30.0, rng), r) == pytest.approx(
        30.0
    )
    s = scene.icosphere(4)
    assert inverse.chamfer(s.vertices, s.faces, 1.1 * s.vertices, s.faces) == pytest.approx(
        0.1, rel=0.05
    )
    assert inverse.angle_deg([1, 0, 0], [1, 1, 0]) == pytest.approx(45.0)
    assert inverse.psnr(np.zeros(4), np.full(4, 0.1)) == pytest.approx(20.0)
    masks = [np.array([True, True, False, False])]
    assert inverse.mask_iou(masks, [np.array([True, False, True, False])]) == pytest.approx(1 / 3)
    assert math.isclose(inverse.rel_error([1.1, 0], np.array([1.0, 0])), 0.1)
