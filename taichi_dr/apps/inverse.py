"""The inverse-rendering applications of ``taichi-dr fit``: each builds a
:class:`~taichi_dr.apps.fit.Problem` from a deliberately wrong start and measures how close the
fit gets to the ground truth.

=========  ===========================================  ==========================================
app        fitted (parameter names)                     metrics (goal)
=========  ===========================================  ==========================================
geometry   vertices (icosphere → target mesh)           chamfer / bbox diagonal (≤ 1 %), IoU (≥ .97)
pose       pose.rotation, pose.translation              rotation error (≤ 1°), translation (≤ 1 %)
texture    texture                                      PSNR on visible texels (≥ 30 dB)
material   material.base_color, roughness, metallic     relative errors (≤ 5 %)
           (``shading="phong"``/``"blinn-phong"``:
           base_color, specular, shininess)
lighting   directional direction + colour, point        direction (≤ 1°), relative errors (≤ 5 %)
           light position, SH environment (9×3)
joint      material.base_color, roughness + the         as material and lighting
           directional light's direction and colour
=========  ===========================================  ==========================================

Scenes are normalised to the unit ball (centred on the bounding box) and seen by
``--views`` cameras on an orbit of radius 3.2 (fov 45°), elevations alternating +30°/−20°.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .. import io, scene
from ..camera import Camera
from ..errors import UserError
from ..render.pipeline import Renderer, RenderSettings
from ..render.vertex import axis_angle
from . import fit
from .fit import Fit
from .orbit import ViewState
from .runner import Runner

TEXTURE_SIZE = 256  # every mesh gets a texture of this size (white when it has none)
DISTANCE, FOV = 3.2, 45.0


@dataclass
class FitOptions:
    """What an application is built from: ``views`` cameras of ``resolution`` (an int for
    square images, or (width, height)), visibility gradients ``mode``, random ``seed``, and
    the geometry/pose options (large-step ``precondition``ing, ``coarse_to_fine`` blur,
    soft-mode ``sigma_anneal``, the pose's ``start_angle``); ``shading`` picks the material
    app's model (None: ggx)."""

    views: int = 8
    resolution: int | tuple = 64
    mode: str = "antialias"
    seed: int = 0
    precondition: bool = False
    coarse_to_fine: bool = False
    sigma_anneal: bool = False
    shading: str | None = None
    start_angle: float = 30.0  # pose: degrees between the start and the true rotation


@dataclass
class App:
    """A built application: the problem, its metrics and what to save."""

    name: str
    problem: fit.Problem
    mesh: scene.Mesh  # the mesh being rendered (start shape for geometry)
    metrics: object  # (Fit) -> dict of numbers
    goals: dict  # metric name -> (comparison "<=" or ">=", threshold)
    key_metric: str
    synthetic: bool = True
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- scenes


def normalise(mesh: scene.Mesh) -> scene.Mesh:
    """``mesh`` centred on its bounding box and scaled into the unit ball, with UVs and a
    texture (white when it has none) so every app shares one renderer."""
    v = mesh.vertices - (mesh.vertices.max(0) + mesh.vertices.min(0)) / 2
    v = v / np.linalg.norm(v, axis=1).max()
    # planar UVs for untextured meshes: constant UVs would make the texture footprint's
    # derivative (|d uv| at 0) infinite and the position gradients NaN
    uvs = mesh.uvs if mesh.uvs is not None else 0.5 + 0.5 * v[:, :2]
    tex = mesh.texture if mesh.texture is not None else white_texture()
    return scene.Mesh(v, mesh.faces, None, uvs, tex, name=mesh.name)


def white_texture() -> np.ndarray:
    return np.ones((TEXTURE_SIZE, TEXTURE_SIZE, 3), dtype=np.float32)


def textured_blob(seed: int = 0) -> scene.Mesh:
    """A UV sphere with the checker texture, pushed out radially into a lumpy, asymmetric
    shape (so silhouette and texture both fix the pose)."""
    s = scene.textured_sphere(texture_size=TEXTURE_SIZE)
    d = s.vertices / np.linalg.norm(s.vertices, axis=1, keepdims=True)
    r = 1 + 0.25 * d[:, 0] * d[:, 1] + 0.2 * np.sin(3 * d[:, 2] + 1) + 0.15 * d[:, 0]
    return scene.Mesh(d * r[:, None], s.faces, None, s.uvs, s.texture, name="textured_blob")


def image_size(options: FitOptions) -> tuple:
    """(width, height) from ``options.resolution`` (an int for square images, or a pair)."""
    res = options.resolution
    return (res, res) if isinstance(res, int) else tuple(res)


def rig(n: int, size: tuple) -> list:
    """``n`` cameras of ``size`` (width, height) around the origin (azimuths evenly
    spaced, elevations alternating)."""
    width, height = size
    cams = []
    for k in range(n):
        az = math.radians(360.0 * k / n + 20.0)
        el = math.radians(20.0 if n == 1 else (30.0 if k % 2 == 0 else -20.0))
        eye = DISTANCE * np.array(
            [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]
        )
        cams.append(Camera.look_at(eye, fov=FOV, width=width, height=height))
    return cams


def _lights(ambient=0.1, directional=(), point=(), sh=None) -> dict:
    """Renderer field values for a light set (unused slots dark)."""
    d = np.zeros((4, 3))
    d[:, 2] = 1
    dc = np.zeros((4, 3))
    for i, (direction, colour) in enumerate(directional):
        d[i] = np.asarray(direction, float) / np.linalg.norm(direction)
        dc[i] = colour
    pp, pc = np.zeros((4, 3)), np.zeros((4, 3))
    for i, (position, colour) in enumerate(point):
        pp[i], pc[i] = position, colour
    return {
        "lights.ambient": np.full(3, ambient),
        "lights.dir_direction": d,
        "lights.dir_color": dc,
        "lights.point_position": pp,
        "lights.point_color": pc,
        "lights.sh": np.zeros((9, 3)) if sh is None else np.asarray(sh, float),
    }


def _material(base=(0.8, 0.8, 0.8), roughness=0.6, metallic=0.0, specular=0.5) -> dict:
    return {
        "material.base_color": np.asarray(base, float),
        "material.roughness": roughness,
        "material.metallic": metallic,
        "material.specular": specular,
        "material.shininess": 32.0,
        "material.opacity": 1.0,
    }


STUDIO = _lights(0.15, [((0.4, 0.8, 0.6), (0.9, 0.9, 0.9)), ((-0.7, 0.1, -0.3), (0.4, 0.45, 0.5))])


def _renderer(mesh, cams, options: FitOptions, shading="ggx"):
    settings = RenderSettings(shading=shading, mode=options.mode, background=(0.0, 0.0, 0.0))
    return fit.shared_renderer(mesh, cams, settings)


def supersampled(mesh, cameras, settings, lights: dict, material=None, factor: int = 2):
    """(views, H, W, 3) linear renders of ``mesh`` for ``cameras`` by the mesh renderer
    (one batched call), box-filtered from ``factor``² samples per pixel: ground truth for
    the fits of other scene representations (voxels, splats). ``lights`` and
    ``material``: keyword dicts of ``Lights.reset`` / ``Material.set``."""
    s = int(factor)
    big = [Camera(c.view, c.proj, c.width * s, c.height * s, c.near, c.far) for c in cameras]
    r = Renderer(mesh, big, settings)
    r.lights.reset(**lights)
    if material:
        r.material.set(**material)
    img = r.render().image.astype(np.float64)  # (views, sH, sW, 3)
    B, h, w = img.shape[0], img.shape[1] // s, img.shape[2] // s
    return img.reshape(B, h, s, w, s, 3).mean(axis=(2, 4))


# --------------------------------------------------------------------------- metrics


def rotation_error_deg(r_est, r_true) -> float:
    R = axis_angle(np.asarray(r_est, float)) @ axis_angle(np.asarray(r_true, float)).T
    return math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


def angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(np.clip(c, -1, 1)))


def rel_error(est, true) -> float:
    return float(np.linalg.norm(np.asarray(est) - true) / np.linalg.norm(true))


def chamfer(v_a, f_a, v_b, f_b, count: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance ½(mean_a min_b |a − b| + mean_b min_a |a − b|) between
    ``count`` area-uniform surface samples of each mesh (same units as the vertices); nearest
    neighbours by :class:`taichi_dr.discrete.KDTree`."""
    import trimesh

    from ..discrete import KDTree

    pa = trimesh.sample.sample_surface(trimesh.Trimesh(v_a, f_a, process=False), count, seed=seed)
    pb = trimesh.sample.sample_surface(trimesh.Trimesh(v_b, f_b, process=False), count, seed=seed)
    pa, pb = pa[0], pb[0]
    return 0.5 * (KDTree(pb).query(pa)[0].mean() + KDTree(pa).query(pb)[0].mean())


def mask_iou(masks, targets) -> float:
    """Mean over views of |a ∧ b| / |a ∨ b| of boolean masks."""
    ious = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(masks, targets)]
    return float(np.mean(ious))


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a) - b) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-20))


def _random_unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def perturb_rotation(r, degrees: float, rng) -> np.ndarray:
    """Axis-angle of R(δ)·R(r), δ a rotation by ``degrees`` about a random axis."""
    R = axis_angle(math.radians(degrees) * _random_unit(rng)) @ axis_angle(np.asarray(r, float))
    angle = math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1))
    if angle < 1e-12:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return angle * axis / (2 * math.sin(angle))


def _clip(lo, hi):
    return ("clip", lo, hi)


_NORMALISE_ROWS = ("normalise",)


# --------------------------------------------------------------------------- applications


def build(name: str, options: FitOptions, target_mesh: scene.Mesh | None = None) -> App:
    """Build application ``name`` (one of ``BUILDERS``) from ``options``; ``target_mesh``
    replaces the built-in shape."""
    if name not in BUILDERS:
        raise UserError(f"unknown application {name!r}; choose one of {', '.join(BUILDERS)}")
    if name == "texture" and target_mesh is not None and target_mesh.texture is None:
        raise UserError(
            f"fit texture: --target-mesh {target_mesh.name!r} has no texture; "
            "give a mesh with UVs and a texture"
        )
    rng = np.random.default_rng(options.seed)
    target = normalise(target_mesh) if target_mesh is not None else None
    return BUILDERS[name](options, rng, target)


def _truth(params) -> dict:
    return {p.name: p.truth for p in params}


def _build_geometry(options: FitOptions, rng, target):
    target = target or normalise(scene.blob(4, seed=options.seed, amplitude=0.3))
    sphere = scene.icosphere(4)
    radius = np.linalg.norm(target.vertices, axis=1).mean()
    start = normalise(sphere)
    start.vertices = start.vertices * radius
    cams = rig(options.views, image_size(options))
    r = _renderer(target, cams, options)
    fixed = {**STUDIO, **_material(roughness=0.6)}
    problem = fit.Problem(
        r,
        [fit.View(c) for c in cams],
        [fit.Param("vertices", start.vertices, 0.02 if options.precondition else 0.005)],
        fixed,
        precondition=options.precondition,
        large_steps_lambda=20.0,
        regularize={} if options.precondition else {"laplacian": 2.0, "normal": 0.01},
        recompute_normals=True,
        blur_sigma=min(image_size(options)) / 64 if options.coarse_to_fine else 0.0,
        sigma_anneal=(3e-4, 3e-5) if options.sigma_anneal else None,
    )
    fit.render_targets(problem, {"vertices": target.vertices})
    target_masks = [v.alpha > 0.5 for v in problem.views]
    r.set_mesh(start)
    diag = float(np.linalg.norm(target.vertices.max(0) - target.vertices.min(0)))
    V = start.num_vertices

    def metrics(f, it=None):
        out = {"iou": mask_iou(f.masks, target_masks)}
        if it is None or it % 10 == 0:
            v = f.values()["vertices"][:V]
            out["chamfer_rel"] = chamfer(v, start.faces, target.vertices, target.faces) / diag
        return out

    return App(
        "geometry",
        problem,
        start,
        metrics,
        {"chamfer_rel": ("<=", 0.01), "iou": (">=", 0.97)},
        "chamfer_rel",
        extra={"target_mesh": target, "bbox_diagonal": diag},
    )


def _build_pose(options: FitOptions, rng, target):
    mesh = target or normalise(textured_blob())
    cams = rig(options.views, image_size(options))
    r = _renderer(mesh, cams, options)
    diag = float(np.linalg.norm(mesh.vertices.max(0) - mesh.vertices.min(0)))
    r_true = math.radians(20.0) * _random_unit(rng)
    t_true = 0.05 * diag * _random_unit(rng)
    angle = options.start_angle
    r_start = perturb_rotation(r_true, angle, rng)
    t_start = t_true + 0.1 * diag * _random_unit(rng)
    params = [
        fit.Param("pose.rotation", r_start, 0.03, truth=r_true),
        fit.Param("pose.translation", t_start, 0.02, truth=t_true),
    ]
    problem = fit.Problem(
        r,
        [fit.View(c) for c in cams],
        params,
        {**STUDIO, **_material(roughness=0.8)},
        blur_sigma=min(image_size(options)) / 16 if options.coarse_to_fine else 0.0,
        blur_until=0.5,
        lr_decay=0.99,
    )
    fit.render_targets(problem, _truth(params))

    def metrics(f, it=None):
        v = f.values()
        return {
            "rotation_error_deg": rotation_error_deg(v["pose.rotation"], r_true),
            "translation_error_rel": float(np.linalg.norm(v["pose.translation"] - t_true) / diag),
        }

    return App(
        "pose",
        problem,
        mesh,
        metrics,
        {"rotation_error_deg": ("<=", 1.0), "translation_error_rel": ("<=", 0.01)},
        "rotation_error_deg",
    )


def _build_texture(options: FitOptions, rng, target):
    mesh = target or normalise(textured_blob())
    cams = rig(options.views, image_size(options))
    r = _renderer(mesh, cams, options)
    truth = mesh.texture.astype(np.float64)
    lights = _lights(0.5, [((0.3, 1.0, 0.5), (0.6, 0.6, 0.6))])
    params = [fit.Param("texture", np.full_like(truth, 0.5), 0.02, _clip(0, 1), truth)]
    problem = fit.Problem(
        r, [fit.View(c) for c in cams], params, {**lights, **_material(roughness=1.0)}
    )
    fit.render_targets(problem, _truth(params))
    visible = _visible_texels(problem, truth.shape[:2])

    def metrics(f, it=None):
        t = f.values()["texture"]
        return {
            "psnr_visible": psnr(t[visible], truth[visible]),
            "visible_fraction": float(visible.mean()),
        }

    return App("texture", problem, mesh, metrics, {"psnr_visible": (">=", 30.0)}, "psnr_visible")


def _visible_texels(problem, shape) -> np.ndarray:
    """Texels that are a bilinear tap of some covered pixel's level-0 lookup in some view
    (from the UV AOV of the target renders)."""
    r = problem.renderer
    h, w = shape
    visible = np.zeros((h, w), bool)
    fit.setup(problem, {})
    out = r.render()
    for b in range(len(problem.views)):
        uv = out.uv[b][out.mask[b]]
        x = uv[:, 0] * w - 0.5
        y = (1 - uv[:, 1]) * h - 0.5
        for dx in (0, 1):
            for dy in (0, 1):
                xi = (np.floor(x).astype(int) + dx) % w
                yi = (np.floor(y).astype(int) + dy) % h
                visible[yi, xi] = True
    return visible


MATERIAL_PROJECTIONS = {
    "base_color": _clip(0, 1),
    "roughness": _clip(0.05, 1),
    "metallic": _clip(0, 1),
    "specular": _clip(0, None),
    "shininess": None,  # fitted as log(shininess): always positive
}


def _material_params(truth, start):
    """Params for the material fields named in ``truth`` (in MATERIAL_PROJECTIONS order)."""
    return [
        fit.Param(
            f"material.{n}",
            np.asarray(start[n], float),
            0.02 if n != "shininess" else 0.05,
            proj,
            np.asarray(truth[n]),
            log=n == "shininess",
        )
        for n, proj in MATERIAL_PROJECTIONS.items()
        if n in truth
    ]


def _errors(f, params) -> dict:
    """Relative error per fitted parameter (angle in degrees for directions)."""
    v = f.values()
    out = {}
    for p in params:
        key = p.name.split(".")[1]
        if key == "dir_direction":
            out["direction_error_deg"] = angle_deg(v[p.name][0], p.truth[0])
        elif p.name.startswith("lights.dir_color"):
            out["intensity_error_rel"] = rel_error(v[p.name][0], p.truth[0])
        elif key == "point_position":
            out["point_error_rel"] = rel_error(v[p.name][0], p.truth[0])
        else:
            out[f"{key}_error_rel"] = rel_error(v[p.name], p.truth)
    return out


MATERIAL_CASES = {  # shading: (truth, start) of the fitted material fields
    "ggx": (
        {"base_color": (0.75, 0.35, 0.2), "roughness": 0.35, "metallic": 0.4},
        {"base_color": (0.5, 0.5, 0.5), "roughness": 0.8, "metallic": 0.1},
    ),
    "phong": (
        {"base_color": (0.75, 0.35, 0.2), "specular": 0.6, "shininess": 40.0},
        {"base_color": (0.5, 0.5, 0.5), "specular": 0.2, "shininess": 8.0},
    ),
}
MATERIAL_CASES["blinn-phong"] = MATERIAL_CASES["phong"]


def _build_material(options: FitOptions, rng, target):
    """``options.shading`` (default ggx) picks the reflectance model and the fitted fields:
    GGX base colour, roughness, metallic; or (Blinn-)Phong base colour, specular and
    shininess (stepped in log space)."""
    shading = options.shading or "ggx"
    mesh = target or normalise(scene.icosphere(4))
    cams = rig(options.views, image_size(options))
    r = _renderer(mesh, cams, options, shading)
    lights = _lights(
        0.05,
        [
            ((0.5, 0.7, 0.8), (1.0, 1.0, 1.0)),
            ((-0.8, 0.2, 0.3), (0.5, 0.4, 0.3)),
            ((0.1, -0.6, -0.8), (0.3, 0.4, 0.5)),
        ],
    )
    params = _material_params(*MATERIAL_CASES[shading])
    problem = fit.Problem(r, [fit.View(c) for c in cams], params, {**lights, **_material()})
    fit.render_targets(problem, _truth(params))
    goals = {f"{p.name.split('.')[1]}_error_rel": ("<=", 0.05) for p in params}
    return App(
        "material",
        problem,
        mesh,
        lambda f, it=None: _errors(f, params),
        goals,
        "base_color_error_rel",
    )


SH_TRUTH = np.array(
    [
        [0.9, 0.85, 0.8],
        [0.25, 0.2, 0.1],
        [0.1, 0.15, 0.2],
        [-0.2, -0.1, 0.05],
        [0.1, 0.05, 0.0],
        [-0.05, 0.05, 0.1],
        [0.15, 0.1, 0.05],
        [0.05, -0.05, -0.1],
        [-0.1, 0.0, 0.1],
    ]
)


def _build_lighting(options: FitOptions, rng, target):
    """Three captures, one light kind each (the object lit by the directional light alone,
    by the point light alone and by the SH environment alone): summed in one picture a
    directional light and an order-2 SH environment are nearly indistinguishable (a
    clamped cosine is ≈ 98 % order-2 SH), see the README's note on ambiguity."""
    mesh = target or normalise(scene.icosphere(4))
    cams = rig(options.views, image_size(options))
    r = _renderer(mesh, cams, options)
    d_true = np.array([0.5, 0.8, 0.4]) / np.linalg.norm([0.5, 0.8, 0.4])
    scene_true = _lights(
        0.0, [(d_true, (1.2, 1.0, 0.8))], [((1.5, 1.0, 2.0), (6.0, 6.0, 6.0))], SH_TRUTH
    )
    scene_start = _lights(
        0.0, [((-0.2, 1.0, 0.8), (0.5, 0.5, 0.5))], [((0.0, 2.0, 2.5), (6.0,) * 3)], _sh_start()
    )
    names = ["lights.dir_direction", "lights.dir_color", "lights.point_position", "lights.sh"]
    proj = {"lights.dir_direction": _NORMALISE_ROWS, "lights.dir_color": _clip(0, None)}
    params = [
        fit.Param(
            n, scene_start[n], 0.02, proj.get(n), scene_true[n], None if n == "lights.sh" else [0]
        )
        for n in names
    ]
    fixed = {**_lights(0.0), **_material(roughness=0.9)}
    fixed["lights.point_color"] = scene_true["lights.point_color"]
    zero = {
        n: np.zeros_like(scene_true[n])
        for n in ("lights.dir_color", "lights.point_color", "lights.sh")
    }
    views = []
    for keep in ("lights.dir_color", "lights.point_color", "lights.sh"):
        off = {n: z for n, z in zero.items() if n != keep}
        views += [fit.View(c, overrides=off) for c in cams]
    problem = fit.Problem(r, views, params, fixed)
    fit.render_targets(problem, _truth(params))
    goals = {
        "direction_error_deg": ("<=", 1.0),
        "intensity_error_rel": ("<=", 0.05),
        "point_error_rel": ("<=", 0.05),
        "sh_error_rel": ("<=", 0.05),
    }
    return App(
        "lighting",
        problem,
        mesh,
        lambda f, it=None: _errors(f, params),
        goals,
        "direction_error_deg",
    )


def _sh_start() -> np.ndarray:
    s = np.zeros((9, 3))
    s[0] = 0.5
    return s


def _build_joint(options: FitOptions, rng, target):
    """Material (base colour, roughness) and the directional light (direction, colour)
    at once, no ambient light: the diffuse term only fixes base colour × light colour; the
    specular highlight (F0 = 0.04, independent of the base colour) fixes the light's
    colour, and several views keep a highlight in sight."""
    mesh = target or normalise(scene.icosphere(4))
    cams = rig(options.views, image_size(options))
    r = _renderer(mesh, cams, options)
    d_true = np.array([0.5, 0.8, 0.4]) / np.linalg.norm([0.5, 0.8, 0.4])
    light_true = _lights(0.0, [(d_true, (1.5, 1.3, 1.1))])
    light_start = _lights(0.0, [((0.0, 1.0, 1.0), (0.8, 0.8, 0.8))])
    params = _material_params(
        {"base_color": (0.75, 0.35, 0.2), "roughness": 0.3},
        {"base_color": (0.5, 0.5, 0.5), "roughness": 0.7},
    )
    proj = {"lights.dir_direction": _NORMALISE_ROWS, "lights.dir_color": _clip(0, None)}
    params += [
        fit.Param(n, light_start[n], 0.02, proj[n], light_true[n], [0])
        for n in ("lights.dir_direction", "lights.dir_color")
    ]
    problem = fit.Problem(
        r, [fit.View(c) for c in cams], params, {**light_true, **_material(metallic=0.0)}
    )
    fit.render_targets(problem, _truth(params))
    goals = {
        "base_color_error_rel": ("<=", 0.05),
        "roughness_error_rel": ("<=", 0.05),
        "direction_error_deg": ("<=", 1.0),
        "intensity_error_rel": ("<=", 0.05),
    }
    return App(
        "joint", problem, mesh, lambda f, it=None: _errors(f, params), goals, "base_color_error_rel"
    )


BUILDERS = {
    "geometry": _build_geometry,
    "pose": _build_pose,
    "texture": _build_texture,
    "material": _build_material,
    "lighting": _build_lighting,
    "joint": _build_joint,
}


# --------------------------------------------------------------------------- running


def optimise(app: App, runner: Runner, iterations: int, stop_at_goal: bool = False) -> dict:
    """Run ``app``'s fit for ``iterations`` under ``runner`` (checkpoints, metrics, live
    view; synthetic apps record their metrics each iteration and may stop at the goal),
    write the outputs (params.json, mesh.obj, target.png, final.png) and return the final
    metrics (also in metrics.json)."""
    fit = Fit(app.problem, iterations)
    reached = {}

    def step(it):
        record = fit.step(it)
        if app.synthetic:
            record.update(app.metrics(fit, it))
            if "goal" not in reached and goals_met(app.goals, record):
                reached["goal"] = it + 1
                record["done"] = stop_at_goal
        return record

    dashboard = Dashboard(fit)
    runner.run(step, iterations, state=fit, panels=dashboard.panels, dashboard=dashboard)
    fit.render_current()
    records = runner.records  # iteration 0 first, also after --resume
    final = {"loss_start": records[0]["loss"] if records else None}
    final["loss"] = records[-1]["loss"] if records else None
    if app.synthetic:
        final.update(app.metrics(fit, None))
        final["goals"] = {k: f"{op} {v}" for k, (op, v) in app.goals.items()}
        final["goal_met"] = goals_met(app.goals, final)
        final["iterations_to_goal"] = reached.get("goal")
    metrics = runner.finish(final)
    save_outputs(runner.out, app, fit)
    return metrics["final"]


class Dashboard:
    """The live view of a fit (see :mod:`taichi_dr.apps.runner`): target | current | error of
    any view, and the current model from an orbit camera around the unit ball that every
    scene is normalised into."""

    def __init__(self, fit: Fit):
        self.fit, self.views = fit, len(fit.problem.views)
        self.orbit = ViewState(center=np.zeros(3), radius=1.0, fov=FOV)

    def panels(self, view: int = 0) -> list:
        target = self.fit.problem.views[view].target
        current = self.fit.last_images[view]
        current = np.zeros_like(target) if current is None else current  # before step 1
        return [target, current, np.abs(current - target)]

    def render(self, state: ViewState) -> np.ndarray:
        r = self.fit.r
        return self.fit.preview(state.camera(r.width, r.height))


def goals_met(goals, values) -> bool:
    """Whether every ``goals`` entry (metric: (\"<=\" or \">=\", threshold)) holds in ``values``."""
    for name, (op, threshold) in goals.items():
        v = values.get(name)
        if v is None or not (v <= threshold if op == "<=" else v >= threshold):
            return False
    return True


def save_outputs(out, app: App, fit: Fit) -> None:
    """params.json, mesh.obj (+ texture), target.png and final.png (first view)."""
    values = fit.values()
    params = {}
    for p in app.problem.params:
        entry = {"start": np.asarray(p.start).tolist(), "final": values[p.name].tolist()}
        if p.truth is not None:
            entry["truth"] = np.asarray(p.truth).tolist()
        params[p.name] = entry
    r = fit.r
    V = app.mesh.num_vertices
    if "vertices" in values:
        params["vertices"]["final"] = values["vertices"][:V].tolist()
        params["vertices"]["start"] = np.asarray(app.mesh.vertices).tolist()
    io.save_json(out / "params.json", params)
    vertices = values.get("vertices", r.mesh.positions.to_numpy())[:V]
    texture = r.texture.image() if r.texture is not None else None
    mesh = scene.Mesh(vertices, app.mesh.faces, None, app.mesh.uvs, texture, name=app.name)
    scene.save_obj(out / "mesh.obj", mesh)
    io.save_image(out / "target.png", app.problem.views[0].target)
    io.save_image(out / "final.png", fit.last_images[0])
