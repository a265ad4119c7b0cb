"""Files: the 3D Gaussian Splatting ``.ply`` layout, and point clouds.

The 3DGS layout (graphdeco-inria's ``save_ply``, read by every viewer) is one ``vertex``
element of float32 properties ``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K−1)−1) opacity
scale_0..2 rot_0..3``: the opacity is stored as a logit, the scales as logarithms, the
rotation as an unnormalised (w, x, y, z) quaternion, the SH coefficients as f_dc (degree 0,
per channel) and f_rest (degrees ≥ 1, channel-major: all of red's, then green's, then
blue's). :func:`read_gaussians` reads it (binary either endianness or ASCII, any numeric
property types, extra properties ignored); :func:`write_gaussians` writes it
(binary little-endian). Point clouds (any ``.ply``/``.obj``/... trimesh reads as points or
vertices) come from :func:`read_points`.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..errors import UserError

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
            "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
SH_C0 = 0.28209479177387814


@dataclass
class Gaussians:
    """A 3DGS scene in the renderer's units: means (N, 3), quats (N, 4) wxyz, scales
    (N, 3) linear, opacities (N,) in [0, 1], sh (N, K, 3) with K = (degree + 1)²; float32."""

    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    sh: np.ndarray

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    def __len__(self) -> int:
        return len(self.means)

    def colors(self) -> np.ndarray:
        """Degree-0 (view-independent) colours (N, 3): max(C0 · f_dc + ½, 0)."""
        return np.maximum(SH_C0 * self.sh[:, 0] + 0.5, 0.0)


def _header(f, path):
    """(format, [(element name, count, [(property, dtype or None for lists)])], size)."""
    if f.readline().strip() != b"ply":
        raise UserError(f"{path} is not a PLY file (no 'ply' magic line)")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise UserError(f"{path}: the PLY header has no end_header line")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return fmt, elements
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                elements[-1][2].append((words[-1], None))
            elif words[1] in PLY_TYPES and len(words) == 3:
                elements[-1][2].append((words[2], PLY_TYPES[words[1]]))
            else:
                raise UserError(f"{path}: unknown PLY property type in {line.strip()!r}")
        else:
            raise UserError(f"{path}: cannot parse PLY header line {line.strip()!r}")


def is_gaussian_ply(path) -> bool:
    """True when ``path`` is a PLY file whose vertices carry the 3DGS properties."""
    path = Path(path)
    if path.suffix.lower() != ".ply" or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            _, elements = _header(f, path)
    except (UserError, OSError):
        return False
    names = {p for e in elements if e[0] == "vertex" for p, _ in e[2]}
    return {"f_dc_0", "opacity", "scale_0", "rot_0"} <= names


def read_gaussians(path) -> Gaussians:
    """The Gaussians of a 3DGS ``.ply`` (module docstring); one-line errors for files that
    are missing, not PLY, lack properties or are truncated."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; check the path")
    with open(path, "rb") as f:
        fmt, elements = _header(f, path)
        if not elements or elements[0][0] != "vertex":
            raise UserError(f"{path}: the first PLY element must be 'vertex'")
        _, n, props = elements[0]
        if any(t is None for _, t in props):
            raise UserError(f"{path}: list properties in 'vertex' are not 3DGS data")
        names = [p for p, _ in props]
        missing = [p for p in REQUIRED if p not in names]
        if missing:
            raise UserError(
                f"{path} lacks the 3DGS vertex properties {', '.join(missing)}; "
                "is it a Gaussian splatting .ply?"
            )
        if fmt == "ascii":
            try:
                data = np.loadtxt(f, dtype=np.float64, max_rows=n, ndmin=2)
            except ValueError as exc:
                raise UserError(f"{path}: bad ASCII PLY data ({exc})") from None
            if data.shape != (n, len(props)) and not (n == 0 and data.size == 0):
                raise UserError(
                    f"{path}: expected {n} vertices of {len(props)} values, got {data.shape}"
                )
            data = data.reshape(n, len(props))
            column = {p: data[:, i] for i, p in enumerate(names)}
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(p, order + t) for p, t in props])
            raw = f.read(n * dtype.itemsize)
            if len(raw) < n * dtype.itemsize:
                raise UserError(
                    f"{path} is truncated: {n} vertices need {n * dtype.itemsize} bytes, "
                    f"found {len(raw)}"
                )
            data = np.frombuffer(raw, dtype=dtype, count=n)
            column = {p: data[p].astype(np.float64) for p in names}
        else:
            raise UserError(f"{path}: unknown PLY format {fmt!r}")
    rest = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]))
    if rest != [f"f_rest_{i}" for i in range(len(rest))] or len(rest) % 3:
        raise UserError(f"{path}: f_rest_* must be f_rest_0..f_rest_(3m−1), got {len(rest)}")
    K = 1 + len(rest) // 3
    if round(K**0.5) ** 2 != K or K > 16:
        raise UserError(
            f"{path}: {len(rest)} f_rest values match no SH degree ≤ 3 (need 0, 9, 24, 45)"
        )
    sh = np.zeros((n, K, 3))
    for ch in range(3):
        sh[:, 0, ch] = column[f"f_dc_{ch}"]
        for k in range(1, K):
            sh[:, k, ch] = column[f"f_rest_{ch * (K - 1) + k - 1}"]

    def stack(prefix, count):
        return np.stack([column[f"{prefix}{i}"] for i in range(count)], axis=1)

    with np.errstate(over="ignore"):
        return Gaussians(
            means=np.stack([column["x"], column["y"], column["z"]], axis=1).astype(np.float32),
            quats=stack("rot_", 4).astype(np.float32),
            scales=np.exp(stack("scale_", 3)).astype(np.float32),
            opacities=(1 / (1 + np.exp(-column["opacity"]))).astype(np.float32),
            sh=sh.astype(np.float32),
        )


def write_gaussians(path, g: Gaussians) -> Path:
    """Write ``g`` in the 3DGS layout (binary little-endian, normals 0), atomically."""
    n, K = len(g.means), g.sh.shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (K - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    o = np.clip(np.asarray(g.opacities, np.float64), 1e-7, 1 - 1e-7)
    with np.errstate(divide="ignore"):
        columns = [
            np.asarray(g.means, np.float64), np.zeros((n, 3)), g.sh[:, 0, :],
            np.transpose(g.sh[:, 1:, :], (0, 2, 1)).reshape(n, -1), np.log(o / (1 - o))[:, None],
            np.log(np.asarray(g.scales, np.float64)), np.asarray(g.quats, np.float64),
        ]  # fmt: skip
    data = np.concatenate(columns, axis=1).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\n"
    header += "comment written by taichi_dr (3D Gaussian Splatting layout)\n"
    header += f"element vertex {n}\n" + "".join(f"property float {p}\n" for p in names)
    header += "end_header\n"

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(data.tobytes())

    return io.atomic_write(path, write)


def read_points(path) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) float64, colours (N, 3) linear in [0, 1]; grey without colours) of a
    point cloud — or of a mesh's vertices — read through trimesh."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; check the path")
    try:
        geometry = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many types
        raise UserError(f"cannot read {path} as a point cloud ({exc})") from None
    if isinstance(geometry, trimesh.Scene):
        geometry = geometry.to_geometry()
    points = np.asarray(getattr(geometry, "vertices", np.zeros((0, 3))), dtype=np.float64)
    if len(points) == 0:
        raise UserError(f"{path} holds no points")
    colors = np.full((len(points), 3), 0.7)
    rgba = getattr(getattr(geometry, "visual", None), "vertex_colors", None)
    if rgba is None and hasattr(geometry, "colors") and len(geometry.colors):
        rgba = geometry.colors
    if rgba is not None and len(rgba) == len(points):
        colors = io.srgb_to_linear(np.asarray(rgba, np.float64)[:, :3] / 255.0)
    if not np.all(np.isfinite(points)):
        raise UserError(f"{path} has NaN or inf point coordinates")
    return points, colors


def point_radii(points: np.ndarray, neighbours: int = 3) -> np.ndarray:
    """A splat radius per point: half the mean distance to its ``neighbours`` nearest
    points (a hole-free look for evenly sampled clouds)."""
    from scipy.spatial import cKDTree

    k = min(neighbours + 1, len(points))
    if k < 2:
        return np.full(len(points), 0.01)
    d, _ = cKDTree(points).query(points, k=k)
    r = 0.5 * d[:, 1:].mean(axis=1)
    return np.maximum(r, max(float(np.median(r)), 1e-9) * 1e-3)
