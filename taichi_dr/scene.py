"""Meshes: the in-memory form every stage reads, loading via trimesh, procedural shapes.

A :class:`Mesh` holds NumPy arrays: ``vertices`` (V, 3) float64, ``faces`` (F, 3) int32
(counter-clockwise seen from outside = front facing), ``normals`` (V, 3) unit float64,
optional ``uvs`` (V, 2) with v up (OpenGL: v = 0 is the bottom row of the texture image),
optional ``texture`` (H, W, 3) linear float32 with row 0 at the top.

Every :class:`Mesh` is validated when it is built (``Mesh(...)``, :meth:`Mesh.from_arrays`,
:func:`load_mesh`, :func:`as_mesh`); whatever is wrong is a :class:`UserError` naming the
problem and the fix. The faces are kept exactly as given, so a triangle id indexes the
input's faces (as OpenGL's primitive id, nvdiffrast and PyTorch3D do): a degenerate face (a
repeated vertex index or negligible area) covers no pixel, and a duplicate face (the same
three vertices, any order) loses every pixel to its first copy — the rasterizer's zero-area
test and lower-id tie rule. Computations that sum over the surface (normals, soft coverage,
mesh regularizers) use :func:`distinct_faces`, each surface triangle once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backend
from .errors import UserError
from .io import atomic_write, load_image, save_image, srgb_to_linear

SUPPORTED_FORMATS = ("obj", "ply", "stl", "off", "glb", "gltf")

# A face whose doubled area is below this fraction of the squared bounding-box diagonal is
# degenerate: its sides are ~1e-7 of the mesh size, below float32 resolution.
_DEGENERATE_AREA = 1e-14


@dataclass
class Mesh:
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None
    name: str = "mesh"

    def __post_init__(self):
        """Validate and convert every array (see :func:`validate_mesh`)."""
        name = self.name
        v = _as_array(self.vertices, np.float64, (None, 3), name, "vertices")
        f = _as_array(self.faces, np.int64, (None, 3), name, "faces")
        if len(v) == 0 or len(f) == 0:
            raise UserError(
                f"mesh {name!r} is empty ({len(v)} vertices, {len(f)} faces); "
                "give a mesh with at least one triangle"
            )
        bad = ~np.all(np.isfinite(v), axis=1)
        if bad.any():
            raise UserError(
                f"mesh {name!r} has {int(bad.sum())} vertices with NaN or inf coordinates "
                f"(first: vertex {int(np.argmax(bad))}); fix or remove them"
            )
        backend.check_magnitude(v, f"mesh {name!r} vertex coordinates", "f64")
        _check_face_range(f, len(v), name)
        f = f.astype(np.int32)
        if len(distinct_faces(v, f)) == 0:
            raise UserError(
                f"mesh {name!r} has no face with an area (all {len(f)} are degenerate); "
                "check the file's faces and units"
            )
        if self.uvs is not None:
            self.uvs = _as_array(self.uvs, np.float64, (len(v), 2), name, "uvs")
            if not np.all(np.isfinite(self.uvs)):
                raise UserError(f"mesh {name!r} has NaN or inf UVs; fix the texture coordinates")
        if self.texture is not None:
            if self.uvs is None:
                raise UserError(
                    f"mesh {name!r} has no UVs; a texture needs texture coordinates — "
                    "export the mesh with UVs (OBJ 'vt', glTF TEXCOORD_0) or drop the texture"
                )
            self.texture = validate_texture(self.texture, name=f"texture of mesh {name!r}")
        computed = vertex_normals(v, f)
        if self.normals is None:
            n = computed
        else:
            n = _as_array(self.normals, np.float64, (len(v), 3), name, "normals")
            length = np.linalg.norm(n, axis=1, keepdims=True)
            valid = np.isfinite(length) & (length > 1e-12)
            n = np.where(valid, n / np.where(valid, length, 1.0), computed)
        self.vertices, self.faces, self.normals = v, f, n

    @classmethod
    def from_arrays(
        cls, vertices, faces, normals=None, uvs=None, texture=None, name: str = "mesh"
    ) -> Mesh:
        """A validated mesh from arrays (see :func:`validate_mesh`); normals are computed
        (area-weighted) when not given, ``texture`` may be an array or an image file."""
        return cls(vertices, faces, normals, uvs, texture, name)

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)


def _as_array(x, dtype, shape, name, what) -> np.ndarray:
    """``x`` as a contiguous array of ``dtype`` and ``shape`` (None = any length)."""
    try:
        a = np.asarray(x)
        if np.issubdtype(dtype, np.integer) and a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError
        a = np.ascontiguousarray(a, dtype=dtype)
    except (TypeError, ValueError):
        kind = "integers" if np.issubdtype(dtype, np.integer) else "numbers"
        raise UserError(f"mesh {name!r}: {what} must be {kind}; fix the array") from None
    if a.size == 0 and shape[0] is None:
        a = a.reshape(0, shape[1])
    ok = a.ndim == 2 and a.shape[1] == shape[1] and shape[0] in (None, a.shape[0])
    if not ok:
        want = f"({'N' if shape[0] is None else shape[0]}, {shape[1]})"
        raise UserError(f"mesh {name!r}: {what} have shape {a.shape}, expected {want}; fix it")
    return a


def _check_face_range(faces: np.ndarray, num_vertices: int, name: str) -> None:
    out = (faces < 0) | (faces >= num_vertices)
    if out.any():
        raise UserError(
            f"mesh {name!r} has a face using vertex index {faces[out][0]} but only "
            f"{num_vertices} vertices; face indices must be 0-based in [0, {num_vertices}) "
            "— fix the face list"
        )


def distinct_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Indices (int64, ascending) of the faces that make up the surface: each set of three
    vertex indices once (its first face, whatever the order or winding of later copies),
    without degenerate faces (a repeated vertex index, or a doubled area below 1e-14 of the
    squared bounding-box diagonal: sides ~1e-7 of the mesh size, below float32 resolution).
    ``vertices`` that are not (V, 3) positions (e.g. bare indices) skip the area test."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    if v.ndim == 2 and v.shape[1] == 3:
        diag2 = float(np.sum((v.max(axis=0) - v.min(axis=0)) ** 2))
        cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        keep &= np.linalg.norm(cross, axis=1) > _DEGENERATE_AREA * diag2
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    unique = np.zeros(len(f), dtype=bool)
    unique[first] = True
    return np.nonzero(keep & unique)[0]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) over the :func:`distinct_faces` (a duplicate face
    counts once); zero-area neighbourhoods get +z."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    f = f[distinct_faces(v, f)] if len(f) else f
    n = np.zeros_like(v)
    if len(f):
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        for k in range(3):
            np.add.at(n, f[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(length > 0, n / np.maximum(length, 1e-300), [0.0, 0.0, 1.0])
    return out


# ---------------------------------------------------------------------------- validation


def validate_texture(texture, power_of_two: bool = False, name: str = "texture") -> np.ndarray:
    """Check a texture and return it as linear float32 (H, W, 3), row 0 at the top.

    ``texture`` is a float array (H, W[, C]) of linear colour, or an image file path
    (sRGB-decoded). Grey (1 or 2 channels) is replicated to RGB; alpha (the 2nd or 4th
    channel) is dropped — textures are opaque — with a warning when it is not all 1.
    ``power_of_two=True`` also requires H and W to be powers of two (for mip-mapping).
    """
    if isinstance(texture, (str, Path)):
        name = str(texture)
        texture = load_image(texture, srgb=True)
    t = np.asarray(texture)
    if not np.issubdtype(t.dtype, np.floating):
        raise UserError(
            f"{name} has dtype {t.dtype}; pass linear float colour in [0, 1] "
            "(taichi_dr.io.load_image decodes 8-bit images) or an image file path"
        )
    if t.ndim == 2:
        t = t[..., None]
    if t.ndim != 3 or t.shape[2] not in (1, 2, 3, 4) or t.shape[0] < 1 or t.shape[1] < 1:
        raise UserError(
            f"{name} has shape {t.shape}; expected (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA"
        )
    channels = t.shape[2]
    if channels in (2, 4):
        alpha = t[..., -1]
        if np.any(alpha < 1.0):
            warnings.warn(
                f"{name}: alpha channel ignored (textures are opaque); "
                "premultiply or flatten the image to silence this",
                stacklevel=2,
            )
        t = t[..., :-1]
    if t.shape[2] == 1:
        t = np.repeat(t, 3, axis=2)
    if not np.all(np.isfinite(t)) or t.min() < 0:
        raise UserError(f"{name} has NaN, inf or negative values; colours must be finite and ≥ 0")
    H, W = t.shape[:2]
    if power_of_two and (H & (H - 1) or W & (W - 1)):
        raise UserError(
            f"{name} is {W}x{H}, not a power of two in each side; "
            "resize it (e.g. to 512x512) or disable mip-mapping"
        )
    return np.ascontiguousarray(t, dtype=np.float32)


def validate_mesh(mesh: Mesh) -> Mesh:
    """Check a mesh again (its arrays may have been changed after it was built) and return
    a validated copy.

    Errors (:class:`UserError`): no vertices or faces, NaN/inf vertices or UVs, face indices
    that are not integers or out of range, no face with an area, a texture without UVs, a
    bad texture. Faces are kept as given (see the module docstring). Invalid normals (NaN,
    zero) are replaced by area-weighted ones and all normals are normalised. Vertex indices
    are never changed."""
    return Mesh(mesh.vertices, mesh.faces, mesh.normals, mesh.uvs, mesh.texture, mesh.name)


def as_mesh(mesh) -> Mesh:
    """A validated :class:`Mesh` from a :class:`Mesh` (checked again) or a
    ``trimesh.Trimesh`` (its vertices, faces, vertex normals, UVs and texture)."""
    if isinstance(mesh, Mesh):
        return validate_mesh(mesh)
    try:
        import trimesh
    except ImportError:  # pragma: no cover - trimesh is a dependency
        trimesh = None
    if trimesh is not None and isinstance(mesh, trimesh.Trimesh):
        v, f, n, uv, tex = _part(mesh, np.eye(4), weld=False)
        tex = None if tex is None else _image_to_linear(tex)
        return Mesh(v, f, n, uv, tex, name=str(mesh.metadata.get("name", "trimesh")))
    raise UserError(
        f"expected a taichi_dr.Mesh or a trimesh.Trimesh, got {type(mesh).__name__}; "
        "build one with taichi_dr.Mesh(vertices, faces) or taichi_dr.load_mesh(path)"
    )


def _report_redundant_faces(mesh: Mesh) -> None:
    """Warn when a loaded mesh has degenerate or duplicate faces (they are kept)."""
    redundant = mesh.num_faces - len(distinct_faces(mesh.vertices, mesh.faces))
    if redundant:
        warnings.warn(
            f"mesh {mesh.name!r}: {redundant} of {mesh.num_faces} faces are degenerate or "
            "duplicates; they are kept, so triangle ids index the file's faces, but cover no "
            "pixel (a duplicate loses to its first copy) — clean the mesh to silence this",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- loading


def load_mesh(path, texture=None) -> Mesh:
    """Load a triangle mesh file (OBJ, PLY, STL, OFF, GLB, glTF) as one validated :class:`Mesh`.

    Scene graphs (glTF, multi-object OBJ) are flattened: every geometry node's transform is
    applied to its vertices and (inverse-transpose) normals; mirroring transforms flip the
    winding so faces stay counter-clockwise from outside. Vertex normals come from the file
    when present and valid, else are area-weighted. UVs (v up) and the base-colour texture
    (sRGB-decoded to linear) are kept when the file has them; vertices are duplicated along
    UV seams. STL triangle soup is welded by exact position (STL has no vertex normals).
    Texture alpha and glTF's baseColorFactor are ignored. ``texture`` (an image path or a
    linear float array, see :func:`validate_texture`) replaces the file's texture.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"mesh path {str(path)!r} is a folder, not a mesh file; give the file inside it"
        )
    if not path.is_file():
        raise UserError(f"mesh file {str(path)!r} does not exist; check the path")
    ext = path.suffix.lower().lstrip(".")
    if ext not in SUPPORTED_FORMATS:
        raise UserError(
            f"mesh file {str(path)!r} has unsupported format {path.suffix!r}; "
            f"convert it to one of: {', '.join(SUPPORTED_FORMATS)}"
        )
    import trimesh

    if ext == "obj":
        _check_obj_indices(path)
    try:
        scene = trimesh.load_scene(str(path), file_type=ext, process=False)
    except Exception as exc:  # trimesh's loaders raise many types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UserError(
            f"cannot read mesh file {str(path)!r} as {ext.upper()} ({detail}); "
            "check that the file is complete and valid, or re-export it"
        ) from None
    name = path.stem
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            parts.append(_part(geometry, np.asarray(transform, dtype=np.float64), ext == "stl"))
    if not parts:
        raise UserError(
            f"mesh file {str(path)!r} contains no triangles (empty, or only points/lines); "
            "give a file with faces"
        )
    offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    vertices = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + o for p, o in zip(parts, offsets)])
    normals = np.concatenate([p[2] for p in parts])  # NaN rows: computed by Mesh
    uvs = None
    if all(p[3] is not None for p in parts):
        uvs = np.concatenate([p[3] for p in parts])
    elif any(p[3] is not None for p in parts):
        warnings.warn(
            f"mesh {name!r}: only some parts have UVs; UVs and texture dropped", stacklevel=2
        )
    if texture is None and uvs is not None:
        texture = _single_texture([p[4] for p in parts], name)
        if texture is None and ext == "obj":
            _warn_unreadable_textures(path, name)
    mesh = Mesh(vertices, faces, normals, uvs, texture, name)
    _report_redundant_faces(mesh)
    return mesh


def _check_obj_indices(path: Path) -> None:
    """OBJ vertex indices start at 1 (negative ones count back); refuse a face index 0
    (trimesh would silently read it as the last vertex)."""
    import re

    text = path.read_text(errors="replace")
    hit = re.search(r"^f(?:[ \t]+\S+)*?[ \t]+-?0(?:/\S*)?(?=\s|$)", text, re.M)
    if hit:
        line = text.count("\n", 0, hit.start()) + 1
        raise UserError(
            f"OBJ file {str(path)!r}, line {line}: face index 0; OBJ indices start at 1 "
            "(negative ones count back from the last vertex) — fix the face list"
        )


def _warn_unreadable_textures(path: Path, name: str) -> None:
    """Warn about each map_Kd texture of an OBJ's materials that is missing or unreadable
    (trimesh drops such textures without a word)."""
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("mtllib"):
            continue
        mtl = path.parent / line.split(None, 1)[-1].strip()
        if not mtl.is_file():
            warnings.warn(
                f"mesh {name!r}: material file {mtl.name!r} does not exist; rendering "
                "without its textures — fix the mtllib line or pass texture=...",
                stacklevel=3,
            )
            continue
        for entry in mtl.read_text(errors="replace").splitlines():
            if entry.strip().startswith("map_Kd"):
                image = mtl.parent / entry.split()[-1]
                problem = "does not exist"
                if image.is_file():
                    try:
                        load_image(image)
                        continue
                    except UserError:
                        problem = "is not a readable image"
                warnings.warn(
                    f"mesh {name!r}: texture {image.name!r} (map_Kd in {mtl.name}) {problem}; "
                    "rendering without it — fix the .mtl file or pass texture=...",
                    stacklevel=3,
                )


def _part(geometry, transform: np.ndarray, weld: bool):
    """(vertices, faces, normals or NaN, uvs or None, texture or None) of one scene node."""
    v = np.asarray(geometry.vertices, dtype=np.float64)
    f = np.asarray(geometry.faces, dtype=np.int64)
    # trimesh keeps normals read from the file in its cache; nothing computes them here.
    n = geometry._cache.cache.get("vertex_normals")
    n = np.full_like(v, np.nan) if n is None or np.shape(n) != v.shape else np.array(n, float)
    visual = geometry.visual
    uv = getattr(visual, "uv", None)
    uv = None if uv is None or len(uv) != len(v) else np.asarray(uv, dtype=np.float64)
    tex = None
    if uv is not None:
        material = getattr(visual, "material", None)
        tex = getattr(material, "baseColorTexture", None)  # glTF (PBRMaterial)
        if tex is None:
            tex = getattr(material, "image", None)  # OBJ map_Kd (SimpleMaterial)
        if tex is not None and _is_placeholder(tex):
            tex = None
    if weld:
        v, inverse = _weld(v)
        f, n = inverse[f], np.full_like(v, np.nan)
    linear = transform[:3, :3]
    v = v @ linear.T + transform[:3, 3]
    n = n @ np.linalg.pinv(linear)  # normals transform by the inverse transpose
    if np.linalg.det(linear) < 0:
        f = f[:, ::-1]
    return v, f, n, uv, tex


def _is_placeholder(image) -> bool:
    """Whether ``image`` is trimesh's stand-in for a file with UVs but no texture."""
    from trimesh.visual.material import color_image

    stand_in = color_image()
    return image.size == stand_in.size and np.array_equal(np.asarray(image), np.asarray(stand_in))


def _weld(v: np.ndarray):
    """Merge vertices with identical positions, in order of first appearance."""
    _, first, inverse = np.unique(v, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return v[first[order]], rank[inverse.reshape(-1)]


def _single_texture(images, name):
    """The one base-colour texture of a mesh's parts as linear float, or None."""
    unique = {id(im): im for im in images if im is not None}  # parts often share one image
    arrays = [_image_to_linear(im) for im in unique.values()]
    if not arrays:
        return None
    if any(a.shape != arrays[0].shape or np.any(a != arrays[0]) for a in arrays[1:]):
        warnings.warn(
            f"mesh {name!r} has {len(arrays)} different textures; using the first — "
            "bake them into one texture atlas to use all",
            stacklevel=3,
        )
    return arrays[0]


def _image_to_linear(image) -> np.ndarray:
    """A PIL image (sRGB) → linear float32 (H, W, C); alpha stays as is. 16-bit grey
    images (PIL modes I;16* and I) are scaled by 65535 (PIL's RGB conversion clips them)."""
    scale = 255.0
    if image.mode.startswith("I;16") or image.mode == "I":
        scale = 65535.0
    elif image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA")
    x = np.asarray(image, dtype=np.float64) / scale
    if x.ndim == 2:
        x = x[..., None]
    c = 1 if x.shape[2] <= 2 else 3
    x[..., :c] = srgb_to_linear(x[..., :c])
    return x.astype(np.float32)


# ---------------------------------------------------------------------------- saving


def save_obj(path, mesh: Mesh) -> Path:
    """Write ``mesh`` as Wavefront OBJ with normals and UVs; a texture goes to ``NAME.png``
    (sRGB) with material ``NAME.mtl`` beside it. Output is byte-reproducible."""
    path = Path(path)
    lines = ["# taichi_dr"]
    has_uv = mesh.uvs is not None
    if mesh.texture is not None:
        lines += [f"mtllib {path.stem}.mtl", "usemtl material"]
        mtl = f"newmtl material\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nmap_Kd {path.stem}.png\n"
        atomic_write(path.with_suffix(".mtl"), lambda tmp: Path(tmp).write_text(mtl))
        save_image(path.with_suffix(".png"), mesh.texture)
    lines += [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in mesh.vertices]
    if has_uv:
        lines += [f"vt {u:.8f} {v:.8f}" for u, v in mesh.uvs]
    lines += [f"vn {x:.8f} {y:.8f} {z:.8f}" for x, y, z in mesh.normals]
    corner = "{0}/{0}/{0}" if has_uv else "{0}//{0}"
    lines += ["f " + " ".join(corner.format(i + 1) for i in face) for face in mesh.faces]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def concatenate(meshes) -> tuple[Mesh, np.ndarray]:
    """One mesh made of ``meshes`` (vertices and faces appended, face indices offset; uvs
    kept when every mesh has them; no texture) and their face ranges (n, 2) rows (start,
    count): a batch renders mesh k in view b with ``Renderer.set_face_ranges``."""
    meshes = list(meshes)
    if not meshes:
        raise UserError("concatenate needs at least one mesh")
    offsets = np.cumsum([0] + [m.num_vertices for m in meshes])
    starts = np.cumsum([0] + [m.num_faces for m in meshes])
    uvs = [m.uvs for m in meshes]
    mesh = Mesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]),
        np.concatenate([m.normals for m in meshes]),
        np.concatenate(uvs) if all(u is not None for u in uvs) else None,
        name="+".join(m.name for m in meshes),
    )
    ranges = np.stack([starts[:-1], np.diff(starts)], 1).astype(np.int32)
    return mesh, ranges


# ---------------------------------------------------------------------------- shapes


def icosphere(subdivisions: int = 3, radius: float = 1.0) -> Mesh:
    """Icosphere with 20·4^subdivisions faces, centred at the origin, exact radial normals."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = np.asarray(m.vertices, dtype=np.float64)
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    return Mesh(v, np.asarray(m.faces), n, name=f"icosphere{subdivisions}")


def blob(subdivisions: int = 4, seed: int = 0, amplitude: float = 0.4, waves: int = 3) -> Mesh:
    """Bumpy, non-convex, genus-0 star-shaped surface: an icosphere whose radius is
    1 + amplitude·(mean of ``waves`` random plane waves sin(k·d·u + φ)) along unit
    direction d, with frequencies k in [4, 6); radius stays in [1 − amplitude, 1 + amplitude].
    Deterministic in ``seed``."""
    if not 0 <= amplitude < 1:
        raise UserError(f"blob amplitude {amplitude} must be in [0, 1) to keep the radius > 0")
    rng = np.random.default_rng(seed)
    sphere = icosphere(subdivisions)
    d = sphere.vertices
    z, phi = 2 * rng.random(waves) - 1, 2 * np.pi * rng.random(waves)
    u = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], axis=1)
    k, phase = 4 + 2 * rng.random(waves), 2 * np.pi * rng.random(waves)
    r = 1 + amplitude * np.mean(np.sin(k * (d @ u.T) + phase), axis=1)
    return Mesh(d * r[:, None], sphere.faces, name=f"blob{subdivisions}-{seed}")


def torus(R: float = 1.0, r: float = 0.4, n_major: int = 48, n_minor: int = 24) -> Mesh:
    """Ring torus (genus 1) around the z axis: major radius ``R``, tube radius ``r`` < R,
    ``n_major`` × ``n_minor`` vertices, 2·n_major·n_minor faces, exact normals."""
    if not 0 < r < R or n_major < 3 or n_minor < 3:
        raise UserError("torus needs 0 < r < R and at least 3 segments each way")
    theta = 2 * np.pi * np.arange(n_major) / n_major
    phi = 2 * np.pi * np.arange(n_minor) / n_minor
    T, P = np.meshgrid(theta, phi, indexing="ij")
    n = np.stack([np.cos(P) * np.cos(T), np.cos(P) * np.sin(T), np.sin(P)], axis=-1)
    v = n * r + np.stack([R * np.cos(T), R * np.sin(T), np.zeros_like(T)], axis=-1)
    i, j = np.meshgrid(np.arange(n_major), np.arange(n_minor), indexing="ij")
    a, b = i * n_minor + j, (i + 1) % n_major * n_minor + j
    c, d = (i + 1) % n_major * n_minor + (j + 1) % n_minor, i * n_minor + (j + 1) % n_minor
    faces = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], axis=0)
    return Mesh(v.reshape(-1, 3), faces.reshape(-1, 3), n.reshape(-1, 3), name="torus")


def checker_texture(size: int = 256, checks: int = 8) -> np.ndarray:
    """Linear float32 (size, size, 3) texture: a ``checks``×``checks`` checkerboard (dark
    squares at 25 %) over a colour gradient (red grows with u, blue with v, v up)."""
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, c[::-1])  # row 0 = top = v near 1
    base = np.stack([0.2 + 0.8 * u, np.full_like(u, 0.35), 0.2 + 0.8 * v], axis=-1)
    dark = (np.floor(checks * u) + np.floor(checks * v)) % 2 == 1
    return (base * np.where(dark, 0.25, 1.0)[..., None]).astype(np.float32)


def textured_sphere(n_lat: int = 24, n_lon: int = 48, texture_size: int = 256) -> Mesh:
    """Unit UV sphere (poles on ±y) with longitude/latitude UVs and :func:`checker_texture`.
    Vertices are duplicated along the u = 0/1 seam and at the poles (one per pole triangle),
    so no face is degenerate."""
    u = np.arange(n_lon + 1) / n_lon
    lat = np.arange(1, n_lat) / n_lat  # v of the inner rings, south to north
    U, Vv = np.meshgrid(u, lat)
    ring_uv = np.stack([U, Vv], -1).reshape(-1, 2)
    pole_u = (np.arange(n_lon) + 0.5) / n_lon
    uv = np.concatenate(
        [ring_uv, np.stack([pole_u, np.zeros(n_lon)], -1), np.stack([pole_u, np.ones(n_lon)], -1)]
    )
    polar, azimuth = np.pi * (1 - uv[:, 1]), 2 * np.pi * uv[:, 0]
    pos = np.stack(
        [np.sin(polar) * np.sin(azimuth), np.cos(polar), np.sin(polar) * np.cos(azimuth)], -1
    )
    ring = lambda k, m: k * (n_lon + 1) + m  # noqa: E731  (ring k = 0 is the southernmost)
    south, north = (n_lat - 1) * (n_lon + 1), (n_lat - 1) * (n_lon + 1) + n_lon
    faces = []
    m = np.arange(n_lon)
    for k in range(n_lat - 2):
        faces += [np.stack([ring(k, m), ring(k, m + 1), ring(k + 1, m + 1)], -1)]
        faces += [np.stack([ring(k, m), ring(k + 1, m + 1), ring(k + 1, m)], -1)]
    faces += [np.stack([south + m, ring(0, m + 1), ring(0, m)], -1)]
    top = n_lat - 2
    faces += [np.stack([north + m, ring(top, m), ring(top, m + 1)], -1)]
    return Mesh(
        pos,
        np.concatenate(faces),
        pos.copy(),
        uv,
        checker_texture(texture_size),
        name="textured_sphere",
    )


def large_mesh(min_faces: int = 100_000, seed: int = 0) -> Mesh:
    """A :func:`blob` with at least ``min_faces`` faces (20·4^s, e.g. 327,680 for 100,000),
    built at run time for benchmarks."""
    s = 0
    while 20 * 4**s < min_faces:
        s += 1
    return blob(s, seed=seed)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)
