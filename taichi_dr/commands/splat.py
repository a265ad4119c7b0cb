"""``taichi-dr render`` and ``taichi-dr view`` for splat files: a 3DGS ``.ply`` (Gaussians
trained anywhere) or a point-cloud ``.ply`` (isotropic splats, radius from the point
spacing), rendered on any backend — a CPU included.

The camera frames the scene robustly (trained scenes carry floaters): it looks at the
median of the means and fits the box of the 2nd–98th percentiles, from the same direction
as for meshes (``--eye`` / ``--center`` / ``--fov`` as for meshes). ``aov.npz`` holds
``image`` (H, W, 3), ``alpha`` (H, W), ``depth`` (expected camera depth, inf where alpha
is 0) and ``mask`` (alpha > ½).
"""

import time
from pathlib import Path

import numpy as np

from .. import backend, io
from ..camera import check_resolution
from ..errors import UserError
from ..splat import camera as cameras
from ..splat.pipeline import render as splat_render
from ..splat.ply import SH_C0, Gaussians, is_gaussian_ply, point_radii, read_gaussians, read_points


def is_point_cloud(path) -> bool:
    """A ``.ply`` without faces (``vertex`` elements only)."""
    path = Path(path)
    if path.suffix.lower() != ".ply" or not path.is_file():
        return False
    with open(path, "rb") as f:
        header = f.read(4096).split(b"end_header")[0]
    return b"element vertex" in header and not any(
        line.split()[1:2] == [b"face"] and line.split()[2:3] != [b"0"]
        for line in header.splitlines()
        if line.startswith(b"element")
    )


def handles(path) -> bool:
    """Whether ``path`` is a file the splatter renders (3DGS or point-cloud ``.ply``)."""
    return is_gaussian_ply(path) or is_point_cloud(path)


def load(path) -> Gaussians:
    """The Gaussians of a 3DGS ``.ply``, or a point cloud as opaque isotropic splats."""
    if is_gaussian_ply(path):
        g = read_gaussians(path)
    else:
        points, colors = read_points(path)
        n = len(points)
        radii = point_radii(points)
        g = Gaussians(
            means=points.astype(np.float32),
            quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
            scales=np.repeat(radii[:, None], 3, axis=1).astype(np.float32),
            opacities=np.ones(n, np.float32),
            sh=((colors - 0.5) / SH_C0)[:, None, :].astype(np.float32),
        )
    if len(g) == 0:
        raise UserError(f"{path} holds no Gaussians; nothing to render")
    return g


def framing(g: Gaussians) -> tuple[np.ndarray, float]:
    """(centre, radius) of the bulk of the scene: median of the means, half the diagonal
    of the box of their 2nd–98th percentiles."""
    lo, hi = np.percentile(g.means, [2, 98], axis=0)
    return np.median(g.means, axis=0), max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)


def render_gaussians(g: Gaussians, camera, background=(0.0, 0.0, 0.0), near_plane=0.01):
    """(image (H, W, 3), alpha (H, W), expected depth (H, W)) of ``g`` from ``camera``."""
    viewmat, K = cameras.opencv(camera)
    r = splat_render(
        g.means, g.quats, g.scales, g.opacities, g.sh, viewmat[None], K[None], camera.width,
        camera.height, near_plane=near_plane, sh_degree=g.sh_degree,
        backgrounds=np.asarray(background, np.float64)[None], render_mode="RGB+ED",
    )  # fmt: skip
    alpha = np.asarray(r.alphas[0, ..., 0], np.float64)
    depth = np.where(alpha > 0, r.colors[0, ..., 3], np.inf)
    return np.asarray(r.colors[0, ..., :3], np.float64), alpha, depth


def render(args, frame_camera) -> int:
    """``taichi-dr render SCENE.ply`` (the mesh options that do not apply are ignored);
    ``frame_camera(vertices, args)`` is the mesh command's camera from its options."""
    backend.init(args.arch, args.precision)
    g = load(args.mesh)
    centre, radius = framing(g)
    bulk = np.array([centre - radius, centre + radius])
    camera = frame_camera(bulk, args)
    start = time.perf_counter()
    image, alpha, depth = render_gaussians(g, camera, args.background)
    seconds = time.perf_counter() - start
    folder = Path(args.out)
    io.save_image(folder / "image.png", image)
    io.save_npz(
        folder / "aov.npz", image=image.astype(np.float32), alpha=alpha.astype(np.float32),
        depth=depth.astype(np.float32), mask=alpha > 0.5,
    )  # fmt: skip
    print(
        f"rendered {len(g)} Gaussians (SH degree {g.sh_degree}) at {camera.width}x"
        f"{camera.height} on {backend.current_arch()} in {seconds:.3f} s (incl. compile) -> "
        f"{folder}/image.png, {folder}/aov.npz"
    )
    return 0


class SplatViewer:
    """The viewer's renderer for Gaussians (the interface of :class:`taichi_dr.apps.viewer.Viewer`):
    renders a :class:`~taichi_dr.apps.orbit.ViewState` into a picture (sRGB-encoded; GGUI's
    [x, y] with y up from :meth:`canvas_image`). AOVs: image, depth (near bright), mask
    (alpha); the mesh-only AOVs show the image."""

    def __init__(self, g: Gaussians, state, width: int, height: int):
        self.g, self.state = g, state
        self.width, self.height = int(width), int(height)
        self._drawn = None
        self._picture = np.zeros((self.height, self.width, 3))

    def draw(self) -> bool:
        if self.state.key() == self._drawn:
            return False
        image, alpha, depth = render_gaussians(self.g, self.state.camera(self.width, self.height))
        if self.state.aov == "depth":
            near, far = self.state.depth_range()
            t = np.clip((far - depth) / (far - near), 0, 1)
            picture = np.repeat(np.where(alpha > 0, t, 0)[..., None], 3, axis=2)
        elif self.state.aov == "mask":
            picture = np.repeat(alpha[..., None], 3, axis=2)
        else:
            picture = io.linear_to_srgb(image)
        self._picture = picture
        self._drawn = self.state.key()
        return True

    def canvas_image(self) -> np.ndarray:
        """The picture as the (W, H, 3) float32 array GGUI's ``canvas.set_image`` takes."""
        return np.ascontiguousarray(self._picture[::-1].transpose(1, 0, 2), np.float32)

    def picture(self) -> np.ndarray:
        """The picture as an (H, W, 3) array, row 0 at the top."""
        return self._picture


def view(args) -> int:
    """``taichi-dr view SCENE.ply``: the interactive viewer (or ``--headless`` PNG)."""
    from ..apps.orbit import ViewState
    from ..apps.viewer import run_headless, run_window

    W, H = args.resolution
    check_resolution(W, H)
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames must be at least 1, got {args.frames}")
    backend.init(args.arch)
    g = load(args.mesh)
    centre, radius = framing(g)
    state = ViewState(
        center=centre, radius=radius, fov=args.fov, aspect=W / H, azimuth=args.azimuth,
        elevation=args.elevation, shading=args.shading, aov=args.aov,
    )  # fmt: skip
    viewer = SplatViewer(g, state, W, H)
    if args.headless:
        run_headless(viewer, args.frames or 1, args.out, args.spin)
        return 0
    return run_window(viewer, args.out, args.frames)
