"""The pipeline: vertex stage → clip + rasterize → interpolate → texture → shade → blend.

``Renderer`` wires the stages together, owns them and the per-pixel buffers of a batch
of B views (one camera each, one resolution)::

    r = Renderer(mesh, camera, RenderSettings(shading="ggx"))     # or a list of cameras
    out = r.render()            # RenderResult of NumPy arrays
    out.image                   # (H, W, 3) linear, row 0 at the top; (B, H, W, 3) for a list

For gradients, ``rasterize()`` runs visibility outside the tape and ``shade()`` runs the
differentiable stages (from vertex positions, camera, material, lights and texels)::

    r.rasterize()
    with ti.ad.Tape(loss):
        r.shade(); losses.mse_loss(r.image, target, loss)

Every stage is a compile-once array operation (``arrays``): a renderer of a new size, a
new mesh or a second renderer compiles nothing. Like Taichi's fields under a tape, the
renderer's gradients start from zero in each new ``ti.ad.Tape`` (the first ``shade()``
inside a tape clears them); ``zero_grad()`` clears them by hand.
"""

import math
import warnings
from dataclasses import dataclass, fields, replace

import numpy as np
import taichi as ti

from .. import backend, memory
from ..camera import Camera
from ..errors import UserError
from ..scene import Mesh, validate_texture
from . import arrays, blend, interpolate, nmr, shading, silhouette, soft_blend
from .antialias import antialias
from .arrays import Frame
from .lights import Lights
from .mesh import MeshBuffers
from .raster import Rasterizer
from .shading import MODELS, Material
from .soft_faces import SIGMA, soft_params
from .soft_select import SoftCandidates
from .texture import FILTERS, WRAPS, Texture
from .vertex import VertexStage
from .vertex_shading import shade_vertices

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
    "all". The others get zero gradients, and their reverse-mode work is compiled out:
    every pixel adds to each material and light parameter, so leaving out the groups you
    do not fit makes backward passes several times faster."""

    shading: str = "blinn-phong"
    mode: str = "hard"
    cull: str = "none"
    background: tuple = (0.0, 0.0, 0.0)
    texture_filter: str = "trilinear"
    texture_wrap: str = "repeat"
    layers: int = 1
    sigma: float = SIGMA
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
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise UserError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (math.isfinite(self.eps) and 0 <= self.eps < 1):
            raise UserError(
                f"eps (the background's normalised depth in soft mode) must lie in [0, 1), "
                f"got {self.eps}"
            )
        if self.texture_filter not in FILTERS or self.texture_wrap not in WRAPS:
            raise UserError(
                f"texture_filter must be one of {', '.join(FILTERS)} and texture_wrap one of "
                f"{', '.join(WRAPS)}, got {self.texture_filter!r}, {self.texture_wrap!r}"
            )
        if int(self.faces_per_pixel) != self.faces_per_pixel or self.faces_per_pixel < 1:
            raise UserError(
                f"faces_per_pixel (K) must be a positive integer, got {self.faces_per_pixel}"
            )
        if int(self.layers) != self.layers or self.layers < 1:
            raise UserError(f"layers must be a positive integer, got {self.layers}")
        bg = np.asarray(self.background, dtype=np.float64)
        if bg.shape != (3,) or not np.all(np.isfinite(bg)) or bg.min() < 0:
            raise UserError(
                f"background must be 3 finite numbers ≥ 0 (linear RGB), got {self.background}"
            )

    def differentiates(self, group: str) -> bool:
        return group in self.grads


@dataclass
class RenderResult:
    """NumPy outputs, each (H, W[, C]) — (B, H, W[, C]) for a batch of cameras — with
    row 0 at the top.

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


def _aov(name: str):
    """A surface AOV of ``_Pixels``, filled on its first read after the pixel pass."""

    def read(self):
        if self.pending is not None:
            fill, self.pending = self.pending, None
            fill()
        return self.aovs[name]

    return property(read)


class _Pixels:
    """The per-pixel buffers of one frame: each (B·H·W,) with a vector or scalar
    element; the outputs (image, alpha, ...) with gradients. The fused pixel pass
    (``shading.shade_surface``) stores no intermediates: the surface AOVs ``bary``,
    ``depth``, ``position``, ``normal``, ``color`` and ``uv`` are interpolated when first
    read after it (``pending``)."""

    bary, depth, position = _aov("bary"), _aov("depth"), _aov("position")
    normal, color, uv = _aov("normal"), _aov("color"), _aov("uv")

    def __init__(self, frame: Frame, layers: int):
        n = frame.pixels
        self.frame = frame
        channels = dict(bary=3, depth=0, position=3, normal=3, color=3, uv=2)
        self.aovs = {name: arrays.empty(n, c) for name, c in channels.items()}
        self.pending = None  # a function that fills the AOVs, or None when they are current
        self.footprint = arrays.empty(n)  # depth-peeled layers: the per-stage path
        self.shaded = arrays.empty(n, 3)
        self.image = arrays.empty(n, 3, grad=True)
        self.alpha = arrays.empty(n, grad=True)
        self.accum = arrays.empty(layers * n, 3) if layers > 1 else None
        self.transmittance = arrays.empty(layers * n) if layers > 1 else None
        self.edges = None  # mode antialias / nmr: silhouette edges, (2·N,) ivec3
        self.final = None  # their output image
        self.silhouette = None  # mode soft: coverage

    def surface(self) -> tuple:
        """The AOV arrays, to be written now (a pending fill is dropped)."""
        self.pending = None
        return tuple(self.aovs.values())

    def edge_buffers(self, faces: int):
        """Silhouette edges of each pixel pair and the (view, face) classification."""
        n, views = self.frame.pixels, self.frame.views
        if self.edges is None or self.face_bits.shape[0] != views * faces:
            self.edges = arrays.empty(2 * n, 3, ti.i32)
            self.face_bits = arrays.empty(views * faces, dtype=ti.i32)
            self.final = arrays.empty(n, 3, grad=True)
        return self.edges, self.face_bits

    def soft_buffers(self):
        if self.silhouette is None:
            n = self.frame.pixels
            self.silhouette = arrays.empty(n, grad=True)
            self.final = arrays.empty(n, 3, grad=True)
        return self.silhouette, self.final

    def differentiable(self) -> list:
        return [a for a in vars(self).values() if hasattr(a, "grad") and a.grad is not None]


class Renderer:
    """Renders one mesh for a batch of cameras of one resolution (see module docstring).

    ``camera``: a :class:`Camera` (outputs (H, W, ...)) or a sequence of B cameras
    (outputs (B, H, W, ...)). Parameters with gradients: ``mesh`` (positions, normals,
    colors, uvs), ``texture.texels``, ``material``, ``lights`` and, per view, the pose
    and camera offsets of ``vertex``. Per-pixel outputs are flat Taichi ndarrays of
    B·H·W entries (``image``, ``alpha``, ``triangle_id``); :meth:`result` reshapes them.
    """

    def __init__(self, mesh: Mesh, camera, settings: RenderSettings | None = None):
        backend.ensure_init()
        self.settings = settings or RenderSettings()
        self.mesh = MeshBuffers()
        self.vertex = VertexStage(grad=self._geometry)
        self.raster = Rasterizer()
        self.material = Material()
        self.lights = Lights()
        self.texture = None
        self.frame = None
        self.pixels = None
        self.candidates = None  # mode soft: each pixel's candidate faces
        self.vertex_colors = None  # mode soft: shaded vertices (B·V,) vec3
        self._plain: dict = {}  # grad-less twins of inputs whose group is not differentiated
        self.generation = 0  # shade() calls so far (the torch bridge checks its replay)
        self.set_mesh(mesh)
        self.set_camera(camera)

    # ------------------------------------------------------------------ inputs
    @property
    def _geometry(self) -> bool:
        s = self.settings
        return s.differentiates("positions") or s.differentiates("camera")

    @property
    def width(self) -> int:
        return self.frame.width

    @property
    def height(self) -> int:
        return self.frame.height

    @property
    def views(self) -> int:
        return self.frame.views

    def set_mesh(self, mesh: Mesh, colors=None) -> None:
        """Upload geometry (a :class:`Mesh`, validated again, or a ``trimesh.Trimesh``)
        and its texture, when it has one and UVs."""
        mesh = self.mesh.upload(mesh, colors)
        self._ranges = None
        if mesh.texture is not None:
            if mesh.uvs is None:
                raise UserError("mesh has a texture but no UVs; add UVs or drop the texture")
            self.set_texture(mesh.texture)

    def set_positions(self, positions, normals=None) -> None:
        """New vertex positions: (V, 3) shared by the views, or (B, V, 3) one copy per view
        (instances of one topology), with optional normals of the same shape (default:
        area-weighted, recomputed)."""
        p = np.asarray(positions)
        if p.ndim == 3 and p.shape[0] not in (1, self.views):
            raise UserError(
                f"positions hold {p.shape[0]} instances for {self.views} views; give one "
                "(V, 3) set or one per view"
            )
        self.mesh.set_positions(p, normals)

    def set_texture(self, image: np.ndarray) -> None:
        """Use a linear RGB image (H, W, 3), row 0 at the top, as the base-colour texture."""
        if not self.mesh.has_uvs:
            raise UserError("a texture needs UVs but the mesh has none; add UVs first")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"texture must be an RGB image (H, W, 3), got shape {image.shape}")
        image = validate_texture(image)  # finite, ≥ 0
        h, w = image.shape[:2]
        t, s = self.texture, self.settings
        if t is None or (t.height, t.width, t.filter, t.wrap) != (
            h,
            w,
            s.texture_filter,
            s.texture_wrap,
        ):
            self.texture = Texture(h, w, s.texture_filter, s.texture_wrap)
        self.texture.upload(image)

    def configure(self, **changes) -> None:
        """Change settings (e.g. ``shading="ggx"``, ``cull="back"``, ``layers=3``)."""
        settings = replace(self.settings, **changes)
        sizing = ("mode", "layers", "faces_per_pixel")  # what the buffers' sizes depend on
        if any(getattr(settings, k) != getattr(self.settings, k) for k in sizing):
            self._check_memory(self.frame, settings)
        old, self.settings = self.settings, settings
        if (settings.texture_filter, settings.texture_wrap) != (
            old.texture_filter,
            old.texture_wrap,
        ) and self.texture is not None:
            self.set_texture(self.texture.image())
        if settings.layers != old.layers:
            self.pixels = None  # buffers for the new number of layers
        if self._geometry != self.vertex.grad:
            self.vertex.set_grad(self._geometry)

    def set_camera(self, camera) -> None:
        """One :class:`Camera`, or a sequence of cameras (one view each, one resolution);
        resets the per-view pose and camera offsets."""
        cameras = [camera] if isinstance(camera, Camera) else list(camera)
        if not cameras or not all(isinstance(c, Camera) for c in cameras):
            raise UserError("camera must be a Camera or a non-empty sequence of Cameras")
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) > 1:
            raise UserError(f"the cameras of one batch must share a resolution, got {sizes}")
        (w, h) = sizes.pop()
        frame = Frame(len(cameras), h, w)
        self._check_memory(frame, self.settings)  # before any buffer of this size exists
        self.single = isinstance(camera, Camera)
        self.camera = camera
        self.cameras = cameras
        self.frame = frame
        self.vertex.set_cameras(cameras)
        if self.pixels is not None and self.pixels.frame != self.frame:
            self.pixels = None
        if self.lights.sets not in (1, len(cameras)):
            self.lights = Lights()
        if self.mesh.instances not in (1, len(cameras)):
            raise UserError(
                f"the mesh has {self.mesh.instances} position instances but {len(cameras)} "
                "cameras; set_positions with one (V, 3) set or one per camera first"
            )

    def _check_memory(self, f: Frame, s: RenderSettings) -> None:
        """Refuse (``UserError`` with the estimate) frame ``f`` with settings ``s`` when
        their arrays cannot fit in the memory available now."""
        m = self.mesh
        need = memory.render_bytes(
            f.pixels, m.num_faces, m.num_vertices, s.mode, s.layers, s.faces_per_pixel, f.views
        )
        views = f" x {f.views} views" if f.views > 1 else ""
        memory.check(
            need,
            f"rendering {f.width}x{f.height} pixels{views}"
            + (f" in {s.layers} layers" if s.layers > 1 else "")
            + (f" in soft mode with K = {s.faces_per_pixel}" if s.mode == "soft" else ""),
            "lower the resolution"
            + (" or the layers" if s.layers > 1 else "")
            + (" or faces_per_pixel" if s.mode == "soft" else ""),
        )

    def set_lights_per_view(self) -> None:
        """One light set per view (``lights.set(view=b, ...)`` then changes view b's)."""
        if self.lights.sets != self.views:
            values = {n: self.lights.value(n) for n in self.lights.layout.names}
            count = self.lights.count
            self.lights = Lights(self.views, count=tuple(count), **values)

    # ------------------------------------------------------------------ buffers
    def _buffers(self) -> _Pixels:
        s = self.settings
        if self.pixels is None:
            self.pixels = _Pixels(self.frame, s.layers)
        return self.pixels

    def _input(self, array, group: str):
        """``array``, or a grad-less copy of it when ``group`` is not differentiated
        (Taichi then compiles the kernel without that input's reverse-mode work)."""
        if self.settings.differentiates(group):
            return array
        plain = self._plain.get(id(array))
        if plain is None or plain[0] is not array:
            copy = arrays.empty(array.shape[0], _channels(array), _dtype(array))
            plain = self._plain[id(array)] = (array, copy)
        arrays.detach(array, plain[1])
        return plain[1]

    def set_face_ranges(self, ranges=None) -> None:
        """Several meshes in one batch: ``ranges`` (B, 2) rows (start, count) — view b
        draws faces start..start + count − 1 of the mesh (the meshes concatenated into one,
        e.g. with :func:`~taichi_dr.scene.concatenate`); None: every view draws every face."""
        F = self.mesh.num_faces
        if ranges is None:
            self._ranges = None
            return
        r = np.asarray(ranges)
        if r.shape != (self.views, 2) or r.dtype.kind not in "iu":
            raise UserError(
                f"face ranges must be {self.views} integer rows (start, count), got {r.shape}"
            )
        if (r < 0).any() or (r.sum(1) > F).any():
            raise UserError(f"face ranges must lie within the mesh's {F} faces, got {r.tolist()}")
        self._ranges = ((self.views, F), arrays.from_numpy(r.astype(np.int32), dtype=ti.i32))

    def _face_ranges(self):
        F = self.mesh.num_faces
        if self._ranges is None or self._ranges[0] != (self.views, F):
            spans = np.array([[0, F]] * self.views, np.int32)
            self._ranges = ((self.views, F), arrays.from_numpy(spans, dtype=ti.i32))
        return self._ranges[1]

    # ------------------------------------------------------------------ stages
    def rasterize(self, peel: bool = False, count: bool = False) -> None:
        """Visibility (not differentiable): fills ``raster.triangle_id`` and, for the
        edge-based modes, the silhouette edges between pixels."""
        self._vertices()
        self.raster.forward(
            self.vertex.clip,
            self.mesh.faces,
            self._face_ranges(),
            self.frame,
            self.mesh.num_vertices,
            self.settings.cull,
            count=count,
            peel=peel,
        )
        mode = self.settings.mode
        if self.pixels is not None:
            self.pixels.pending = None  # the last pixel pass's AOVs are out of date
        if mode in EDGE_MODES:  # which side of a pixel pair is in front: z-buffer keys
            p, m = self._buffers(), self.mesh
            edges, bits = p.edge_buffers(m.num_faces)
            silhouette.detect(
                self.triangle_id, self.raster.key, self.vertex.clip, m.faces, m.neighbours,
                self._face_ranges(), self.frame, bits, edges,
            )  # fmt: skip
        elif mode == "soft":
            if self.candidates is None:
                self.candidates = SoftCandidates()
            faces, ranges = self._surface_ranges()
            self._warn_near_plane()
            self.candidates.select(
                self.vertex.clip,
                faces,
                ranges,
                self.frame,
                self._soft_params(),
                self.settings.faces_per_pixel,
            )

    def _surface_ranges(self):
        """``mesh.distinct`` and each view's face range as rows of it (soft coverage sums
        each surface triangle once: no degenerate faces, no duplicates)."""
        ranges, m = self._face_ranges(), self.mesh
        cached = getattr(self, "_surface", None)
        if cached is None or cached[0] is not ranges or cached[1] is not m.distinct:
            spans = ranges.to_numpy().reshape(-1, 2)
            first = np.searchsorted(m.distinct_index, spans[:, 0])
            end = np.searchsorted(m.distinct_index, spans.sum(axis=1))
            rows = np.stack([first, end - first], axis=1).astype(np.int32)
            cached = (ranges, m.distinct, arrays.from_numpy(rows, dtype=ti.i32), rows)
            self._surface = cached
        return m.distinct, cached[2]

    def _warn_near_plane(self) -> None:
        """Mode soft draws no face with a vertex in front of the near plane (it does not
        clip): warn once per renderer when some face crosses it."""
        if getattr(self, "_near_warned", False):
            return
        clip = self.vertex.clip.to_numpy().reshape(self.views, -1, 4)
        faces = self.mesh.surface
        for b, (start, count) in enumerate(self._surface[3]):
            front = (clip[b, :, 2] < -clip[b, :, 3])[faces[start : start + count]]
            crossing = int(np.sum(front.any(axis=1) & ~front.all(axis=1)))
            if crossing:
                self._near_warned = True
                warnings.warn(
                    f"mode 'soft' drops the {crossing} faces that cross the camera's near "
                    f"plane in view {b} (it does not clip them, unlike the other modes); move "
                    "the camera back or lower its near distance",
                    UserWarning,
                    stacklevel=3,
                )
                return

    def _soft_params(self):
        s, c = self.settings, self.cameras[0]
        key = (s.sigma, s.gamma, s.eps, c.near, c.far, s.background)
        if getattr(self, "_soft_key", None) != key:
            self._soft_key = key
            self._soft = soft_params(
                s.sigma, s.gamma, s.eps, near=c.near, far=c.far, background=s.background
            )
        return self._soft

    def _vertices(self) -> None:
        m = self.mesh
        self.vertex.camera_grad = self.settings.differentiates("camera")
        self.vertex.forward(
            self._input(m.positions, "positions"),
            self._input(m.normals, "positions"),
            m.num_vertices,
            batched=m.instances > 1,
        )

    def _vertex_attributes(self) -> tuple:
        m = self.mesh
        return (
            self.vertex.world,
            self.vertex.normal,
            self._input(m.colors, "colors"),
            self._input(m.uvs, "uvs"),
        )

    def _shade_pixels(self) -> None:
        """The fused pixel pass: interpolate, texture, shade and composite into
        ``image`` and ``alpha``; the AOVs are interpolated when first read."""
        s, p, m = self.settings, self._buffers(), self.mesh
        sampler = None
        if self.texture is not None:
            sampler = self.texture.forward(grad=s.differentiates("texture"))
        lights = self.lights
        shading.shade_surface(
            s.shading,
            self.frame,
            self.raster.triangle_id,
            self.vertex.clip,
            m.faces,
            m.num_vertices,
            self._vertex_attributes(),
            self._input(self.vertex.eye, "camera"),
            self.material.array(s.differentiates("material")),
            lights.array(s.differentiates("lights")),
            lights.counts,
            sampler,
            self._background(),
            p.image,
            p.alpha,
        )
        p.pending = self._interpolate_aovs

    def _interpolate_aovs(self) -> None:
        m, v = self.mesh, self.vertex
        arrays.untaped(
            interpolate.surface,
            v.clip,
            m.faces,
            self.raster.triangle_id,
            self.frame,
            m.num_vertices,
            (v.world, v.normal, m.colors, m.uvs),
            self.pixels.surface(),
        )

    def _shade_layer(self) -> None:
        s, p, m = self.settings, self._buffers(), self.mesh
        tri = self.raster.triangle_id
        vertex = self._vertex_attributes()
        pixel = p.surface()
        interpolate.surface(
            self.vertex.clip, m.faces, tri, self.frame, m.num_vertices, vertex, pixel
        )
        sampler = None
        if self.texture is not None:
            interpolate.footprint(
                vertex[3], self.vertex.clip, m.faces, tri, self.frame, m.num_vertices, p.footprint
            )
            sampler = self.texture.forward(grad=s.differentiates("texture"))
        lights = self.lights
        shading.shade(
            s.shading,
            self.frame,
            tri,
            p.position,
            p.normal,
            p.color,
            p.uv,
            p.footprint,
            self._input(self.vertex.eye, "camera"),
            self.material.array(s.differentiates("material")),
            lights.array(s.differentiates("lights")),
            lights.counts,
            sampler,
            p.shaded,
        )

    def shade(self) -> None:
        """The differentiable part for the current visibility: vertex stage, texture
        pyramid, interpolation, shading, compositing into ``image`` (one layer)."""
        if arrays.new_tape(self):  # the first shade of a tape starts from zero gradients
            self.zero_grad()
        self.generation += 1
        self._vertices()
        s, p = self.settings, self._buffers()
        if s.mode == "soft":
            self._shade_soft()
            return
        self._shade_pixels()
        if s.mode == "antialias":
            antialias(p.image, p.edges, self.vertex.clip, self.frame, p.final)
        elif s.mode == "nmr":
            nmr.nmr(p.image, p.edges, self.vertex.clip, self.frame, p.final)

    def _shade_soft(self) -> None:
        """Shade at the vertices, then blend the candidates softly."""
        s, m, p = self.settings, self.mesh, self.pixels
        n = self.views * m.num_vertices
        if self.vertex_colors is None or self.vertex_colors.shape[0] != n:
            self.vertex_colors = arrays.empty(n, 3, grad=True)
        shade_vertices(
            s.shading,
            self.vertex.world,
            self.vertex.normal,
            self._input(m.colors, "colors"),
            self._input(self.vertex.eye, "camera"),
            self.material.array(s.differentiates("material")),
            self.lights.array(s.differentiates("lights")),
            self.lights.counts,
            self.vertex_colors,
        )
        silhouette_, image = p.soft_buffers()
        soft_blend.blend(
            self.candidates, self.vertex.clip, self.vertex_colors, self._soft_params(),
            silhouette_, image,
        )  # fmt: skip

    def _background(self):
        """The background colour as a (1,) vec3 array (made when the setting changes)."""
        bg = tuple(self.settings.background)
        if getattr(self, "_background_colour", (None,))[0] != bg:
            self._background_colour = (bg, arrays.from_numpy(np.asarray(bg, float)[None]))
        return self._background_colour[1]

    @property
    def image(self):
        """The final image, (B·H·W,) vec3 Taichi ndarray with gradients."""
        mode = self.settings.mode
        return self.pixels.final if mode in ("soft", *EDGE_MODES) else self.pixels.image

    @property
    def alpha(self):
        """Coverage (B·H·W,), with gradients: the soft silhouette in mode "soft"."""
        p = self.pixels
        return p.silhouette if self.settings.mode == "soft" else p.alpha

    @property
    def triangle_id(self):
        """(B·H·W,) int32 face index, −1 where empty."""
        return self.raster.triangle_id

    def render(self) -> RenderResult:
        """Render all layers and return NumPy arrays (first-layer AOVs)."""
        self.rasterize()
        if self.settings.layers == 1:
            self.shade()
            if self.settings.mode == "soft":  # its AOVs are the hard raster's surface
                self._shade_layer()
            return self.result()
        p = self._buffers()
        material = self.material.array(False)
        first = None
        for k in range(self.settings.layers):
            if k:
                self.rasterize(peel=True)
            self._shade_layer()
            blend.composite_layer(
                k, self.raster.triangle_id, p.shaded, material, p.accum, p.transmittance
            )
            if k == 0:
                first = self.result(final=False)
        blend.composite_finish(
            self.settings.layers,
            p.accum,
            p.transmittance,
            self._background(),
            p.image,
            p.alpha,
        )
        first.image = self._shaped(self.image.to_numpy())
        first.alpha = self._shaped(self.alpha.to_numpy())
        return first

    def _shaped(self, a: np.ndarray) -> np.ndarray:
        """A flat (B·H·W, ...) array as (H, W, ...) for one camera, else (B, H, W, ...)."""
        out = a.reshape(self.frame.shape(*a.shape[1:]))
        return out[0] if self.single else out

    def result(self, final: bool = True) -> RenderResult:
        """The last rendering's outputs as NumPy arrays (see :class:`RenderResult`)."""
        p = self.pixels
        tri = self._shaped(self.raster.triangle_id.to_numpy())
        return RenderResult(
            image=self._shaped(self.image.to_numpy()) if final else None,
            alpha=self._shaped(self.alpha.to_numpy()) if final else None,
            mask=tri >= 0,
            triangle_id=tri,
            depth=self._shaped(p.depth.to_numpy()),
            normal=self._shaped(p.normal.to_numpy()),
            uv=self._shaped(p.uv.to_numpy()),
            barycentric=self._shaped(p.bary.to_numpy()),
        )

    def zero_grad(self) -> None:
        """Clear the gradients of every stage."""
        arrays_with_grad = [
            self.mesh.positions,
            self.mesh.normals,
            self.mesh.colors,
            self.mesh.uvs,
            self.material.values,
            self.lights.values,
            *self.vertex.differentiable(),
            *(self.pixels.differentiable() if self.pixels is not None else ()),
            *([self.vertex_colors] if self.vertex_colors is not None else []),
        ]
        if self.texture is not None:
            arrays_with_grad += [a for a in (self.texture.texels, self.texture.pyramid) if a]
        arrays.clear_grads(*arrays_with_grad)


def _channels(a) -> int:
    return getattr(a, "n", 0) if len(a.shape) == 1 else a.shape[1]


def _dtype(a):
    return a.dtype


def render(
    mesh: Mesh,
    camera,
    settings: RenderSettings | None = None,
    lights: dict | None = None,
    material: dict | None = None,
) -> RenderResult:
    """One-call rendering: build a renderer, set ``lights`` / ``material`` keyword dicts
    (see ``Lights.set`` and ``Material.set``) and return NumPy outputs."""
    r = Renderer(mesh, camera, settings)
    if lights is not None:
        r.lights.reset(**lights)
    if material is not None:
        r.material.reset(**material)
    return r.render()
