"""Named parameters packed into one small 1-D array of reals (array version, issue 13).

The material and the lights reach the kernels as packed arrays: every parameter has a
fixed offset (``Layout``), so one ``ti.types.ndarray`` argument carries all of them, a
kernel compiles once whatever their values, and torch users can pack their own tensors
with the same offsets. :class:`Packed` owns such an array (with gradients) for one or
several *sets* (e.g. one light set per view: set s starts at ``s · layout.size``), and
reads, writes and differentiates it by name::

    m.set(roughness=0.3)    # only the named parameters change
    m.roughness             # 0.3 (a float, or an array of the parameter's shape)
    m.grad("roughness")     # its gradient after a backward pass

With several sets, values and gradients gain a leading (sets,) axis and ``set(view=b)``
changes one set.
"""

import math

import numpy as np

from ..errors import UserError
from . import arrays


class Layout:
    """Offsets of named parameters of given shapes, packed in order."""

    def __init__(self, *entries):
        self.names = tuple(name for name, _ in entries)
        self.shapes = dict(entries)
        self.offsets, offset = {}, 0
        for name, shape in entries:
            self.offsets[name] = offset
            offset += math.prod(shape)
        self.size = offset

    def span(self, name: str) -> slice:
        """Where ``name`` lies within one set."""
        start = self.offsets[name]
        return slice(start, start + math.prod(self.shapes[name]))

    def pack(self, values: dict, out=None) -> np.ndarray:
        """A float64 (size,) array with ``values`` {name: value} at their offsets (the
        rest from ``out`` when given, else 0)."""
        out = np.zeros(self.size) if out is None else np.array(out, dtype=np.float64)
        for name, value in values.items():
            out[self.span(name)] = np.broadcast_to(value, self.shapes[name]).ravel()
        return out


class Packed:
    """``sets`` copies of the parameters of ``layout`` in ``values``, a Taichi ndarray of
    ``sets · layout.size`` reals with gradients. Subclasses give ``layout``,
    ``defaults`` and ``check`` (validation of one set's new values)."""

    layout: Layout
    defaults: dict
    kind = "parameter"  # for messages: "material", "light"
    extra: tuple = ()  # keywords of ``set`` that are not packed values (subclasses)

    def __init__(self, sets: int = 1, **values):
        if int(sets) != sets or sets < 1:
            raise UserError(f"the number of {self.kind} sets must be a positive integer")
        self.sets = int(sets)
        self.values = arrays.empty(self.sets * self.layout.size, grad=True)
        self._plain = None  # a copy without gradients, made on demand
        self.reset(**values)

    def reset(self, **values) -> None:
        """The defaults, then ``values`` (the keywords of ``set``), in every set."""
        self._write(None, {**self.defaults, **values})

    def set(self, view: int | None = None, **values) -> None:
        """Change the named parameters (in set ``view``, or in every set); the others keep
        their values."""
        self._write(view, values)

    def _write(self, view, values: dict) -> None:
        unknown = [n for n in values if n not in self.layout.names and n not in self.extra]
        if unknown:
            raise UserError(
                f"unknown {self.kind} parameter {unknown[0]!r}; "
                f"choose from {', '.join(self.layout.names + self.extra)}"
            )
        values = self.check(values)
        host = arrays.read(self.values).astype(np.float64).reshape(self.sets, -1)
        for s in self._views(view):
            host[s] = self.layout.pack(
                {n: v for n, v in values.items() if n in self.layout.names}, host[s]
            )
        arrays.write(self.values, host.ravel())

    def _views(self, view) -> range:
        if view is None:
            return range(self.sets)
        if int(view) != view or not 0 <= view < self.sets:
            raise UserError(f"view {view} out of range: these {self.kind}s have {self.sets} sets")
        return range(int(view), int(view) + 1)

    def check(self, values: dict) -> dict:
        """Validated float64 values (raise ``UserError`` on a bad one)."""
        out = {}
        for name, value in values.items():
            v = np.asarray(value, dtype=np.float64)
            if not np.all(np.isfinite(v)):
                raise UserError(f"{self.kind} {name} must be finite, got {value}")
            if name in self.layout.shapes and v.shape not in ((), self.layout.shapes[name]):
                raise UserError(
                    f"{self.kind} {name} must have shape {self.layout.shapes[name]}, got {v.shape}"
                )
            out[name] = v
        return out

    def _unpack(self, flat, name):
        a = flat.astype(np.float64).reshape(self.sets, -1)[:, self.layout.span(name)]
        a = a.reshape(self.sets, *self.layout.shapes[name])
        a = a[0] if self.sets == 1 else a
        return float(a) if a.ndim == 0 else a

    def value(self, name: str):
        """The value of ``name``: a float or an array of its shape, with a leading
        (sets,) axis when there are several sets."""
        if name not in self.layout.names:
            raise UserError(f"unknown {self.kind} parameter {name!r}")
        return self._unpack(arrays.read(self.values), name)

    def grad(self, name: str):
        """The gradient of ``name`` (shaped like its value)."""
        if name not in self.layout.names:
            raise UserError(f"unknown {self.kind} parameter {name!r}")
        return self._unpack(arrays.read(self.values.grad), name)

    def __getattr__(self, name):  # called for names that are not attributes
        if name in type(self).layout.names:
            return self.value(name)
        raise AttributeError(name)

    def array(self, grad: bool = True):
        """The packed array to pass to a kernel: ``values`` itself (the kernel's backward
        adds to ``values.grad``) or, with ``grad=False``, a copy without gradients (its
        reverse-mode work is compiled out)."""
        if grad:
            return self.values
        if self._plain is None:
            self._plain = arrays.empty(self.sets * self.layout.size)
        arrays.detach(self.values, self._plain)
        return self._plain

    def zero_grad(self) -> None:
        self.values.grad.fill(0)
