"""Host arrays for the module-level ``ti.types.ndarray`` kernels: NumPy, torch or Taichi.

A kernel over ndarray arguments takes NumPy arrays, torch tensors (zero copy on the CPU;
on the GPU with ``arch=cuda``) and ``ti.ndarray`` alike and compiles once for all three.
Operations that allocate scratch or outputs allocate the same kind as their input
(``like``), so a torch caller gets torch tensors on its device, a NumPy caller NumPy
arrays, and a ``ti.ndarray`` caller device-resident ``ti.ndarray``\\ s.

Dtypes are named ``"i32" "i64" "f32" "f64"``.
"""

import sys

import numpy as np
import taichi as ti

_NP = {"i32": np.int32, "i64": np.int64, "f32": np.float32, "f64": np.float64}
_TI = {"i32": ti.i32, "i64": ti.i64, "f32": ti.f32, "f64": ti.f64}


def _torch():
    return sys.modules.get("torch")  # never import torch for a NumPy caller


def is_torch(a) -> bool:
    torch = _torch()
    return torch is not None and isinstance(a, torch.Tensor)


def is_taichi(a) -> bool:
    return isinstance(a, ti.lang._ndarray.Ndarray)


def dtype_name(a) -> str:
    """The dtype of ``a`` as one of ``"i32" "i64" "f32" "f64"`` (others: its own name)."""
    if is_taichi(a):
        for name, t in _TI.items():
            if a.dtype == t:
                return name
        return str(a.dtype)
    name = str(a.dtype).replace("torch.", "")
    return {"int32": "i32", "int64": "i64", "float32": "f32", "float64": "f64"}.get(name, name)


def empty(like, shape, dtype: str):
    """An uninitialised array of ``shape`` and ``dtype`` of the same kind (and device) as
    ``like`` (None: NumPy)."""
    shape = tuple(int(s) for s in shape)
    if is_torch(like):
        torch = _torch()
        return torch.empty(
            shape, dtype=getattr(torch, np.dtype(_NP[dtype]).name), device=like.device
        )
    if is_taichi(like):
        return ti.ndarray(_TI[dtype], shape if shape else (1,))
    return np.empty(shape, _NP[dtype])


def zeros(like, shape, dtype: str):
    a = empty(like, shape, dtype)
    if is_taichi(a):
        a.fill(0)
    else:
        a[...] = 0
    return a


def to_numpy(a) -> np.ndarray:
    """A NumPy view (NumPy, CPU torch) or copy (GPU torch, ``ti.ndarray``) of ``a``."""
    if is_torch(a):
        return a.detach().cpu().numpy()
    if is_taichi(a):
        return a.to_numpy()
    return np.asarray(a)
