"""Vertex stage: ``world = M·[p, 1]``, ``clip = P·V·world``, normals by M's inverse transpose.

Owns ``model`` and ``view_proj`` (4×4, with gradients: pose and camera parameters reach
the image through them), and per-vertex outputs ``world`` (V, 3), ``normal`` (V, 3, unit)
and ``clip`` (V, 4). Differentiable.
"""

import numpy as np
import taichi as ti

from .. import backend


@ti.data_oriented
class VertexStage:
    def __init__(self, max_vertices: int):
        real = backend.real()
        self.model = ti.Matrix.field(4, 4, real, shape=(), needs_grad=True)
        self.view_proj = ti.Matrix.field(4, 4, real, shape=(), needs_grad=True)
        self.eye = ti.Vector.field(3, real, shape=(), needs_grad=True)
        self.world = ti.Vector.field(3, real, shape=max_vertices, needs_grad=True)
        self.normal = ti.Vector.field(3, real, shape=max_vertices, needs_grad=True)
        self.clip = ti.Vector.field(4, real, shape=max_vertices, needs_grad=True)

    def set_camera(self, camera) -> None:
        """Take model, view and projection matrices and the eye position from ``camera``."""
        self.model[None] = np.asarray(camera.model, dtype=np.float64)
        self.view_proj[None] = camera.proj @ camera.view
        self.eye[None] = camera.eye

    @ti.kernel
    def _transform(self, positions: ti.template(), normals: ti.template(), n: ti.i32):
        for i in range(n):
            M = self.model[None]
            p = M @ ti.Vector([positions[i][0], positions[i][1], positions[i][2], 1.0])
            self.world[i] = ti.Vector([p[0], p[1], p[2]])
            self.clip[i] = self.view_proj[None] @ p
            A = ti.Matrix([[M[r, c] for c in range(3)] for r in range(3)])
            nm = A.inverse().transpose() @ normals[i]
            self.normal[i] = nm / ti.sqrt(nm.dot(nm) + 1e-30)

    def forward(self, mesh) -> None:
        """Transform the first ``mesh.num_vertices`` vertices of a MeshBuffers."""
        self._transform(mesh.positions, mesh.normals, mesh.num_vertices)

    def zero_grad(self) -> None:
        for f in (self.model, self.view_proj, self.eye, self.world, self.normal, self.clip):
            f.grad.fill(0)
