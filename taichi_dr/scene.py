"""Meshes: the in-memory form every stage reads, loading via trimesh, procedural shapes.

A :class:`Mesh` holds NumPy arrays: ``vertices`` (V, 3) float64, ``faces`` (F, 3) int32
(counter-clockwise seen from outside = front facing), ``normals`` (V, 3) unit float64,
optional ``uvs`` (V, 2) with v up (OpenGL), optional ``texture`` (H, W, 3) linear float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError


@dataclass
class Mesh:
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None
    name: str = "mesh"

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
        if self.normals is None:
            self.normals = vertex_normals(self.vertices, self.faces)

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3); zero-area neighbourhoods get +z."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n = np.zeros_like(v)
    if len(f):
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        for k in range(3):
            np.add.at(n, f[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(length > 0, n / np.maximum(length, 1e-300), [0.0, 0.0, 1.0])
    return out


def icosphere(subdivisions: int = 3, radius: float = 1.0) -> Mesh:
    """Unit icosphere with 20·4^subdivisions faces."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(
        np.asarray(m.vertices),
        np.asarray(m.faces),
        np.asarray(m.vertex_normals),
        name=f"icosphere{subdivisions}",
    )


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)
