"""The pipeline: vertex stage → clip + rasterize → interpolate → texture → shade → blend.

``Renderer`` wires the stages together and owns them::

    r = Renderer(mesh, camera, RenderSettings(shading="ggx"))
    out = r.render()            # RenderResult of NumPy arrays
    out.image                   # (H, W, 3) linear, row 0 at the top

For gradients, ``rasterize()`` runs visibility outside the tape and ``shade()`` runs the
differentiable stages (from vertex positions, camera, material, lights and texels)::

    r.rasterize()
    with ti.ad.Tape(loss):
        r.shade(); my_loss_kernel(r.image, loss)
"""

from dataclasses import dataclass, fields, replace

import numpy as np
import taichi as ti

from .. import backend
from ..camera import Camera
from ..errors import UserError
from ..scene import Mesh
from .antialias import Antialias
from .blend import Compositor
from .interpolate import Interpolator
from .lights import Lights
from .mesh import MeshBuffers
from .nmr import NMR
from .raster import FieldRasterizer
from .shading import MODELS, Material, Shader
from .silhouette import Silhouettes, edge_neighbours
from .soft import SoftRasterizer, VertexShader
from .texture import Texture
from .vertex import FieldVertexStage

MODES = ("hard", "antialias", "nmr", "soft")
EDGE_MODES = ("antialias", "nmr")
# what a backward pass can differentiate; see RenderSettings.grads
GRAD_GROUPS = ("positions", "colors", "uvs", "texture", "material", "lights", "camera")


@dataclass(frozen=True)
class RenderSettings:
    """How to render. ``mode`` picks the visibility gradients: "hard" (none),
    "antialias" (analytic edge antialiasing, nvdiffrast-style), "nmr" (Neural Mesh
    Renderer approximate gradients behind the hard image) or "soft" (Soft Rasterizer
    with ``sigma``, ``gamma``, ``eps`` and ``faces_per_pixel`` candidates; shades at the
    vertices, no texture);
    ``shading`` ∈ lambert, phong, blinn-phong, ggx, normals, unlit;
    ``cull`` ∈ none, back, front; ``layers`` > 1 depth-peels that many surfaces (for
    ``material.opacity`` < 1; forward only); ``background``: RGB colour.

    ``grads``: the parameter groups a backward pass differentiates, like PyTorch's
    ``requires_grad`` — any of "positions" (mesh positions and normals), "colors",
    "uvs", "texture", "material", "lights", "camera" (camera and object pose); default
    "all". The others get zero gradients, and their reverse-mode atomics are compiled out:
    every pixel adds to each material and light parameter, so leaving out the groups you
    do not fit makes hard-mode backward passes several times faster (mode "soft" shades
    at the vertices: there it skips the camera/pose Jacobian and the vertex shading's
    backward for the groups left out)."""

    shading: str = "blinn-phong"
    mode: str = "hard"
    cull: str = "none"
    background: tuple = (0.0, 0.0, 0.0)
    texture_filter: str = "trilinear"
    texture_wrap: str = "repeat"
    layers: int = 1
    sigma: float = 1e-4
    gamma: float = 1e-4
    eps: float = 1e-3
    faces_per_pixel: int = 50
    grads: tuple = GRAD_GROUPS

    def __post_init__(self):
        grads = self.grads
        if isinstance(grads, str):
            grads = GRAD_GROUPS if grads == "all" else (grads,)
        unknown = [g for g in grads if g not in GRAD_GROUPS]
        if unknown:
            raise UserError(
                f"unknown gradient group {unknown[0]!r}; choose from {', '.join(GRAD_GROUPS)}"
            )
        object.__setattr__(self, "grads", tuple(g for g in GRAD_GROUPS if g in grads))
        if self.shading not in MODELS:
            raise UserError(f"unknown shading {self.shading!r}; choose one of {', '.join(MODELS)}")
        if self.mode not in MODES:
            raise UserError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.cull not in ("none", "back", "front"):
            raise UserError(f"unknown cull mode {self.cull!r}; choose none, back or front")
        for name in ("sigma", "gamma"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if int(self.faces_per_pixel) != self.faces_per_pixel or self.faces_per_pixel < 1:
            raise UserError(
                f"faces_per_pixel (K) must be a positive integer, got {self.faces_per_pixel}"
            )
        if int(self.layers) != self.layers or self.layers < 1:
            raise UserError(f"layers must be a positive integer, got {self.layers}")


@dataclass
class RenderResult:
    """NumPy outputs, each (H, W[, C]) with row 0 at the top.

    ``image`` linear RGB; ``alpha`` coverage; ``mask`` bool; ``triangle_id`` int32 (−1
    background); ``depth`` eye-space distance along −z (inf background); ``normal`` world
    unit normals; ``uv``; ``barycentric`` perspective-correct."""

    image: np.ndarray
    alpha: np.ndarray
    mask: np.ndarray
    triangle_id: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    uv: np.ndarray
    barycentric: np.ndarray

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@ti.data_oriented
class Renderer:
    """Renders one mesh (of at most ``max_faces`` faces) for one camera resolution."""

    def __init__(
        self,
        mesh: Mesh,
        camera: Camera,
        settings: RenderSettings | None = None,
        max_vertices: int | None = None,
        max_faces: int | None = None,
    ):
        backend.ensure_init()
        self.settings = settings or RenderSettings()
        W, H = camera.width, camera.height
        self.width, self.height = W, H
        self.mesh = MeshBuffers(max_vertices or mesh.num_vertices, max_faces or mesh.num_faces)
        self.vertex = FieldVertexStage(self.mesh.max_vertices)
        self.raster = FieldRasterizer(W, H, self.mesh.max_faces)
        self.interp = Interpolator(W, H)
        real = backend.real()
        shape = (H, W)
        self.position = ti.Vector.field(3, real, shape=shape, **backend.diff())
        self.normal = ti.Vector.field(3, real, shape=shape, **backend.diff())
        self.color = ti.Vector.field(3, real, shape=shape, **backend.diff())
        self.uv = ti.Vector.field(2, real, shape=shape, **backend.diff())
        self.footprint = ti.field(real, shape=shape, **backend.diff())
        self.lights = Lights()
        self.material = Material()
        self.shader = Shader(W, H)
        self.compositor = Compositor(W, H, self.settings.layers)
        self.compositor.set_background(self.settings.background)
        self.silhouettes = Silhouettes(W, H, self.mesh.max_faces)
        self.antialias = Antialias(W, H)
        self.nmr = NMR(W, H)
        self.soft = None  # built on first use of mode="soft": it holds (H, W, K) buffers
        self.vertex_shader = None
        self.neighbours = ti.field(ti.i32, shape=(self.mesh.max_faces, 3))
        self.texture = None
        self.set_mesh(mesh)
        self.set_camera(camera)

    # ------------------------------------------------------------------ inputs
    def set_mesh(self, mesh: Mesh, colors=None) -> None:
        """Upload geometry (and its texture, when it has one and UVs)."""
        self.mesh.upload(mesh, colors)
        neighbours = np.full((self.mesh.max_faces, 3), -1, dtype=np.int32)
        neighbours[: mesh.num_faces] = edge_neighbours(mesh.vertices, mesh.faces)
        self.neighbours.from_numpy(neighbours)
        if mesh.texture is not None:
            if mesh.uvs is None:
                raise UserError("mesh has a texture but no UVs; add UVs or drop the texture")
            self.set_texture(mesh.texture)

    def set_texture(self, image: np.ndarray) -> None:
        """Use a linear RGB image (H, W, 3), row 0 at the top, as the base-colour texture."""
        if not self.mesh.has_uvs:
            raise UserError("a texture needs UVs but the mesh has none; add UVs first")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"texture must be an RGB image (H, W, 3), got shape {image.shape}")
        h, w = image.shape[:2]
        if self.texture is None or (self.texture.height, self.texture.width) != (h, w):
            self.texture = Texture(h, w, self.settings.texture_filter, self.settings.texture_wrap)
        self.texture.upload(image)

    def configure(self, **changes) -> None:
        """Change settings (e.g. ``shading="ggx"``, ``cull="back"``) without rebuilding;
        ``layers`` is fixed at construction."""
        settings = replace(self.settings, **changes)
        if settings.layers != self.settings.layers:
            raise UserError("layers is fixed when the renderer is built; build a new one")
        if settings.background != self.settings.background:
            self.compositor.set_background(settings.background)
        self.settings = settings

    def set_camera(self, camera: Camera) -> None:
        if (camera.width, camera.height) != (self.width, self.height):
            raise UserError(
                f"camera is {camera.width}x{camera.height} but this renderer "
                f"was built for {self.width}x{self.height}"
            )
        self.camera = camera
        self.vertex.set_camera(camera)

    # ------------------------------------------------------------------ stages
    def _stops(self) -> dict:
        """Per kernel, the fields whose gradients ``settings.grads`` leaves out."""
        g, m, v = self.settings.grads, self.mesh, self.vertex
        geometry = "positions" in g or "camera" in g
        return {
            "vertex": (
                (() if "positions" in g else (m.positions, m.normals))
                + (() if "camera" in g else (v.model, v.view_proj, v.normal_matrix))
            ),
            "geometry": () if geometry else (v.clip, v.world, v.normal),
            "colors": () if "colors" in g else (m.colors,),
            "uvs": () if "uvs" in g else (m.uvs,),
            # per-pixel attributes depend on the geometry through the barycentrics
            "pixel": (
                (() if geometry else (self.position, self.normal))
                + (() if geometry or "colors" in g else (self.color,))
                + (() if geometry or "uvs" in g else (self.uv, self.footprint))
            ),
            "texture": ()
            if "texture" in g or self.texture is None
            else (self.texture.texels, self.texture.pyramid),
            "material": ()
            if "material" in g
            else tuple(getattr(self.material, n) for n in Material.names),
            "lights": () if "lights" in g else self.lights.fields,
            "eye": () if "camera" in g else (v.eye,),
        }

    def rasterize(self, peel: bool = False, count: bool = False) -> None:
        """Visibility (not differentiable): fills ``raster.triangle_id`` and, for the
        edge-based modes, the silhouette edges between pixels."""
        self.vertex.forward(self.mesh)
        self.raster.forward(
            self.vertex.clip,
            self.mesh.faces,
            self.mesh.num_faces,
            self.settings.cull,
            count=count,
            peel=peel,
        )
        if self.settings.mode == "soft":
            self._soft().select(self.vertex.clip, self.mesh.faces, self.mesh.num_faces)
        if self.settings.mode in EDGE_MODES:
            self.interp.forward(self.vertex.clip, self.mesh.faces, self.raster.triangle_id)
            self.silhouettes.forward(
                self.raster.triangle_id,
                self.interp.depth,
                self.vertex.clip,
                self.mesh.faces,
                self.neighbours,
                self.mesh.num_faces,
            )

    def _shade_layer(self, stops: dict) -> None:
        m, tri = self.mesh, self.raster.triangle_id
        attributes = (
            (self.vertex.world, self.position),
            (self.vertex.normal, self.normal),
            (m.colors, self.color),
            (m.uvs, self.uv),
        )
        inputs = stops["geometry"] + stops["colors"] + stops["uvs"]
        self.interp.forward(self.vertex.clip, m.faces, tri, attributes, stop=inputs)
        if self.texture is not None:
            self.interp.footprint(
                m.uvs,
                self.vertex.clip,
                m.faces,
                tri,
                self.footprint,
                stop=stops["uvs"] + stops["geometry"],
            )
        self.shader.forward(
            self.settings.shading,
            tri,
            self.position,
            self.normal,
            self.color,
            self.uv,
            self.footprint,
            self.texture,
            self.vertex.eye,
            self.lights,
            self.material,
            stop=stops["pixel"]
            + stops["texture"]
            + stops["material"]
            + stops["lights"]
            + stops["eye"],
        )

    def _soft(self) -> SoftRasterizer:
        s = self.settings
        c = self.camera
        if self.soft is None or (self.soft.K, self.soft.near, self.soft.far) != (
            s.faces_per_pixel,
            c.near,
            c.far,
        ):
            self.soft = SoftRasterizer(
                self.width,
                self.height,
                self.mesh.max_faces,
                K=s.faces_per_pixel,
                near=self.camera.near,
                far=self.camera.far,
            )
            self.vertex_shader = VertexShader(self.mesh.max_vertices)
        self.soft.set(sigma=s.sigma, gamma=s.gamma, eps=s.eps, background=s.background)
        return self.soft

    def shade(self) -> None:
        """The differentiable part for the current visibility: vertex stage, texture
        pyramid, interpolation, shading, compositing into ``image`` (one layer)."""
        soft = self.settings.mode == "soft"
        stops = self._stops()
        self.vertex.forward(self.mesh, stop=stops["vertex"])
        if soft:
            self.vertex_shader.forward(
                self.settings.shading,
                self.vertex,
                self.mesh,
                self.lights,
                self.material,
                stop=stops["geometry"]
                + stops["colors"]
                + stops["material"]
                + stops["lights"]
                + stops["eye"],
            )
            self.soft.forward(self.vertex.clip, self.mesh.faces, self.vertex_shader.colors)
            return
        if self.texture is not None:
            self.texture.forward()
        self._shade_layer(stops)
        self.compositor.single(
            self.shader.image,
            self.raster.triangle_id,
            self.material.opacity,
            stop=stops["material"],
        )
        if self.settings.mode == "antialias":
            self.antialias.forward(self.compositor.image, self.silhouettes.edges, self.vertex.clip)
        elif self.settings.mode == "nmr":
            self.nmr.forward(self.compositor.image, self.silhouettes.edges, self.vertex.clip)

    @property
    def image(self):
        """The final image field (H, W, 3), with gradients."""
        mode = self.settings.mode
        if mode == "soft":
            return self.soft.image
        return {"antialias": self.antialias.image, "nmr": self.nmr.image}.get(
            mode, self.compositor.image
        )

    @property
    def alpha(self):
        """Coverage (H, W), with gradients: the soft silhouette in mode "soft"."""
        return self.soft.silhouette if self.settings.mode == "soft" else self.compositor.alpha

    def render(self) -> RenderResult:
        """Render all layers and return NumPy arrays (first-layer AOVs)."""
        self.rasterize()
        if self.settings.layers == 1:
            self.shade()
            return self._result()
        if self.texture is not None:
            self.texture.forward()
        self.compositor.begin()
        first = None
        for k in range(self.settings.layers):
            if k:
                self.rasterize(peel=True)
            self._shade_layer(self._stops())
            self.compositor.add_layer(
                k, self.shader.image, self.raster.triangle_id, self.material.opacity
            )
            if k == 0:
                first = self._result(final=False)
        self.compositor.finish(self.settings.layers)
        first.image = self.compositor.image.to_numpy()
        first.alpha = self.compositor.alpha.to_numpy()
        return first

    def _result(self, final: bool = True) -> RenderResult:
        tri = self.raster.triangle_id.to_numpy()
        return RenderResult(
            image=self.image.to_numpy() if final else None,
            alpha=self.alpha.to_numpy() if final else None,
            mask=tri >= 0,
            triangle_id=tri,
            depth=self.interp.depth.to_numpy(),
            normal=self.normal.to_numpy(),
            uv=self.uv.to_numpy(),
            barycentric=self.interp.bary.to_numpy(),
        )

    def zero_grad(self) -> None:
        """Clear the gradients of every stage (``ti.ad.Tape`` clears only what it tracks)."""
        for stage in (
            self.mesh,
            self.vertex,
            self.interp,
            self.lights,
            self.material,
            self.shader,
            self.compositor,
            self.antialias,
            self.nmr,
            *[s for s in (self.soft, self.vertex_shader) if s is not None],
        ):
            stage.zero_grad()
        backend.zero_grads(self.position, self.normal, self.color, self.uv, self.footprint)
        if self.texture is not None:
            self.texture.zero_grad()


def render(
    mesh: Mesh,
    camera: Camera,
    settings: RenderSettings | None = None,
    lights: dict | None = None,
    material: dict | None = None,
) -> RenderResult:
    """One-call rendering: build a renderer, set ``lights`` / ``material`` keyword dicts
    (see ``Lights.set`` and ``Material.set``) and return NumPy outputs."""
    r = Renderer(mesh, camera, settings)
    if lights is not None:
        r.lights.set(**lights)
    if material is not None:
        r.material.set(**material)
    return r.render()
