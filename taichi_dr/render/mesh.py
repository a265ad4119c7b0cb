"""Device copy of a :class:`~taichi_dr.scene.Mesh`: the per-vertex inputs of the pipeline.

Owns ``positions`` (V, 3), ``normals`` (V, 3), ``uvs`` (V, 2), ``colors`` (V, 3) — all
with gradients — and ``faces`` (F, 3) int32. Capacity is fixed at construction; a mesh
with fewer elements uses the first ``num_vertices`` / ``num_faces`` slots.
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError


@ti.data_oriented
class MeshBuffers:
    def __init__(self, max_vertices: int, max_faces: int):
        backend.ensure_init()
        real = backend.real()
        V, F = max(int(max_vertices), 1), max(int(max_faces), 1)
        self.max_vertices, self.max_faces = V, F
        self.positions = ti.Vector.field(3, real, shape=V, **backend.diff())
        self.normals = ti.Vector.field(3, real, shape=V, **backend.diff())
        self.uvs = ti.Vector.field(2, real, shape=V, **backend.diff())
        self.colors = ti.Vector.field(3, real, shape=V, **backend.diff())
        self.faces = ti.Vector.field(3, ti.i32, shape=F)
        self.num_vertices = 0
        self.num_faces = 0
        self.has_uvs = False

    def _pad(self, a, n, width, fill=0.0):
        out = np.full((n, width), fill, dtype=backend.np_real())
        out[: len(a)] = a
        return out

    def upload(self, mesh, colors=None) -> None:
        """Copy ``mesh`` (and optional per-vertex linear ``colors`` (V, 3)) to the device."""
        V, F = mesh.num_vertices, mesh.num_faces
        if V > self.max_vertices or F > self.max_faces:
            raise UserError(
                f"mesh has {V} vertices / {F} faces, more than this renderer's "
                f"{self.max_vertices} / {self.max_faces}; build the renderer for this mesh"
            )
        self.positions.from_numpy(self._pad(mesh.vertices, self.max_vertices, 3))
        self.normals.from_numpy(self._pad(mesh.normals, self.max_vertices, 3))
        self.has_uvs = mesh.uvs is not None
        uvs = mesh.uvs if self.has_uvs else np.zeros((V, 2))
        self.uvs.from_numpy(self._pad(uvs, self.max_vertices, 2))
        cols = np.ones((V, 3)) if colors is None else np.asarray(colors, dtype=np.float64)
        self.colors.from_numpy(self._pad(cols, self.max_vertices, 3, 1.0))
        faces = np.zeros((self.max_faces, 3), dtype=np.int32)
        faces[:F] = mesh.faces
        self.faces.from_numpy(faces)
        self.num_vertices, self.num_faces = V, F

    def zero_grad(self) -> None:
        backend.zero_grads(self.positions, self.normals, self.uvs, self.colors)
