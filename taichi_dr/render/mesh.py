"""Device copy of a :class:`~taichi_dr.scene.Mesh`: the per-vertex inputs of the pipeline.

Owns Taichi ndarrays (compile-once kernels read them, see ``arrays``): ``positions``,
``normals`` (V,) vec3 — or (B·V,), one copy per view, when instanced with per-view
``positions`` — ``uvs`` (V,) vec2 and ``colors`` (V,) vec3, all with gradients; ``faces``
(F,) ivec3 int32, the mesh's faces as given (triangle ids index them), ``neighbours`` (F,)
ivec3 (the face across each edge, −1 on a boundary; for silhouette edges) and ``distinct``
(D,) ivec3, each surface triangle once (:func:`~taichi_dr.scene.distinct_faces`: no
degenerate faces, no later duplicates; rows ``distinct_index`` of ``faces``, host copy
``surface``) for what sums over the surface (soft coverage, normals, regularizers). Buffers
are allocated for the mesh uploaded, so a mesh of any size can follow any other (no
recompilation).
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from ..scene import Mesh, as_mesh, distinct_faces
from . import arrays
from .silhouette import edge_neighbours


class MeshBuffers:
    def __init__(self):
        backend.ensure_init()
        self.num_vertices = 0
        self.num_faces = 0
        self.instances = 1  # copies of positions and normals (1: shared by every view)
        self.has_uvs = False

    def upload(self, mesh, colors=None) -> Mesh:
        """Copy ``mesh`` (a :class:`~taichi_dr.scene.Mesh`, validated again, or a
        ``trimesh.Trimesh``) and optional per-vertex linear ``colors`` (V, 3) to the
        device; returns the validated :class:`~taichi_dr.scene.Mesh`."""
        mesh = as_mesh(mesh)
        V, F = mesh.num_vertices, mesh.num_faces
        backend.check_magnitude(mesh.vertices, f"mesh {mesh.name!r} vertex coordinates")
        cols = np.ones((V, 3)) if colors is None else np.asarray(colors, dtype=np.float64)
        if cols.shape != (V, 3) or not np.all(np.isfinite(cols)) or cols.min() < 0:
            raise UserError(
                f"vertex colors must be {V}x3 finite numbers ≥ 0 (linear RGB), got shape "
                f"{cols.shape}" + ("" if cols.shape != (V, 3) else " with NaN, inf or negatives")
            )
        self.has_uvs = mesh.uvs is not None
        uvs = mesh.uvs if self.has_uvs else np.zeros((V, 2))
        self.positions = arrays.from_numpy(mesh.vertices, grad=True)
        self.normals = arrays.from_numpy(mesh.normals, grad=True)
        self.uvs = arrays.from_numpy(uvs, grad=True)
        self.colors = arrays.from_numpy(cols, grad=True)
        self.faces = arrays.from_numpy(mesh.faces.astype(np.int32), dtype=ti.i32)
        self.neighbours = arrays.from_numpy(
            edge_neighbours(mesh.vertices, mesh.faces).reshape(-1, 3), dtype=ti.i32
        )
        self.distinct_index = distinct_faces(mesh.vertices, mesh.faces)
        self.surface = mesh.faces[self.distinct_index].astype(np.int32)  # host copy
        self.distinct = arrays.from_numpy(self.surface, dtype=ti.i32)
        self.num_vertices, self.num_faces, self.instances = V, F, 1
        return mesh

    def set_positions(self, positions, normals=None) -> None:
        """New vertex positions (V, 3), or (B, V, 3) for one copy per view (instances of
        one topology), with optional normals of the same shape (default: recomputed,
        area-weighted, on the host)."""
        from ..scene import vertex_normals

        p = np.asarray(positions, dtype=np.float64)
        V = self.num_vertices
        if p.shape[-2:] != (V, 3) or p.ndim not in (2, 3) or not np.all(np.isfinite(p)):
            raise UserError(f"positions must be finite ({V}, 3) or (B, {V}, 3), got {p.shape}")
        backend.check_magnitude(p, "vertex positions")
        p = p.reshape(-1, V, 3)
        faces = self.faces.to_numpy()
        n = (
            np.stack([vertex_normals(q, faces) for q in p])
            if normals is None
            else np.asarray(normals, dtype=np.float64).reshape(p.shape)
        )
        self.instances = len(p)
        self.positions = arrays.from_numpy(p.reshape(-1, 3), grad=True)
        self.normals = arrays.from_numpy(n.reshape(-1, 3), grad=True)

    def zero_grad(self) -> None:
        for a in (self.positions, self.normals, self.uvs, self.colors):
            a.grad.fill(0)
