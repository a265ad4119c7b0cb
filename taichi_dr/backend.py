"""Backend selection: the one place that calls ``ti.init``.

``init(arch="cpu", precision="f32")`` starts Taichi once per process. Calling it again
with the same settings is a no-op; different settings reset Taichi (every field allocated
before becomes invalid, so renderers must be rebuilt). ``precision`` sets Taichi's default
float type, which every field of taichi_dr uses (``real()``).
"""

import taichi as ti

from .errors import UserError

ARCHS = ("cpu", "cuda", "vulkan", "metal", "gpu")
# Archs whose reverse-mode autodiff we trust (see shared TAICHI_NOTES: vulkan's is broken).
AUTODIFF_ARCHS = ("cpu", "cuda")

_state: dict = {
    "arch": None,
    "precision": None,
    "requested": None,
    "forward_mode": False,
    "deterministic": False,
}


GPU_ORDER = ("cuda", "metal", "vulkan")  # what "gpu" tries, in Taichi's order (no OpenGL)
# Starts Taichi on one arch in a child process and prints the arch it got. Some drivers
# crash the process while being probed (Taichi's OpenGL probe segfaults on machines without
# GPU drivers), so no arch but cpu is ever tried in this process before the probe passed.
_PROBE = (
    "import sys, taichi as ti; "
    "ti.init(arch=getattr(ti, sys.argv[1]), enable_fallback=False, log_level=ti.ERROR); "
    "print('ARCH', ti.lang.impl.current_cfg().arch.name)"
)
_probed: dict = {}


def _arch_name(ti_arch) -> str:
    name = ti_arch.name if hasattr(ti_arch, "name") else str(ti_arch)
    return {"x64": "cpu", "arm64": "cpu"}.get(name, name)


def _probe(archs) -> None:
    """Probe each arch of ``archs`` (not yet probed) in its own child process, in parallel."""
    import subprocess
    import sys

    todo = [a for a in archs if a not in _probed]
    procs = {
        a: subprocess.Popen(
            [sys.executable, "-c", _PROBE, a],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for a in todo
    }
    for arch, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = ""
        got = [ln.split()[1] for ln in out.splitlines() if ln.startswith("ARCH ")]
        _probed[arch] = proc.returncode == 0 and got == [arch]


def available_archs() -> list[str]:
    """Archs that start on this machine (each probed once, in a child process)."""
    _probe(GPU_ORDER)
    return ["cpu"] + [a for a in GPU_ORDER if _probed[a]]


def init(
    arch: str = "cpu",
    precision: str | None = None,
    forward_mode: bool | None = None,
    deterministic: bool | None = None,
    **kwargs,
) -> str:
    """Start Taichi on ``arch`` ∈ {cpu, cuda, vulkan, metal, gpu} with float ``precision``.

    ``precision`` is "f32" or "f64"; ``None`` keeps the current one (f32 on first start).
    ``forward_mode=True`` gives every differentiable field a dual as well, for
    ``ti.ad.FwdMode`` derivative images (twice the memory of those fields); ``None``
    keeps the current setting. It applies to fields allocated afterwards.
    ``deterministic=True`` runs CPU kernels on one thread, so float atomic adds (gradient
    sums) happen in one order and a computation repeats bit for bit; on GPUs it changes
    nothing (their atomics still add in varying order). ``None`` keeps the current setting
    (off on first start).
    Returns the arch really obtained ("gpu" resolves to cuda, vulkan or metal). Raises
    :class:`UserError` with a one-line message when the arch is unknown or unavailable.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if precision is None:
        precision = _state["precision"] or "f32"
    if forward_mode is not None:
        _state["forward_mode"] = bool(forward_mode)
    if precision not in ("f32", "f64"):
        raise UserError(f"unknown precision {precision!r}; choose f32 or f64")
    if deterministic is None:
        deterministic = _state["deterministic"]
    if _state["requested"] == (arch, precision, deterministic) and not kwargs:
        return _state["arch"]
    target = arch
    if arch != "cpu":  # probed in a child process first: a crashing driver cannot kill us
        _probe(GPU_ORDER if arch == "gpu" else (arch,))
        usable = [a for a in (GPU_ORDER if arch == "gpu" else (arch,)) if _probed[a]]
        if not usable:
            raise UserError(
                f"arch {arch!r} is not available on this machine (available: "
                f"{', '.join(available_archs())}); pass --arch cpu or install the driver"
            )
        target = usable[0]
    if _state["arch"] is not None:
        ti.reset()
    options = dict(offline_cache=True, log_level=ti.WARN, fast_math=False)
    if deterministic:
        options["cpu_max_num_threads"] = 1
    options.update(kwargs)
    try:
        ti.init(
            arch=getattr(ti, target),
            default_fp=ti.f64 if precision == "f64" else ti.f32,
            enable_fallback=False,
            **options,
        )
        got = _arch_name(ti.lang.impl.current_cfg().arch)
    except Exception:
        got = None
    if got != target:
        ti.reset()
        _state.update(arch=None, precision=None, requested=None, deterministic=False)
        avail = ", ".join(available_archs()) or "none"
        raise UserError(
            f"arch {arch!r} is not available on this machine (available: {avail}); "
            "pass --arch cpu or install the driver"
        )
    if precision == "f64" and got == "metal":
        raise UserError("metal has no float64; use precision='f32' or --arch cpu")
    _state.update(
        arch=got,
        precision=precision,
        deterministic=deterministic,
        requested=(arch, precision, deterministic),
    )
    return got


def ensure_init() -> None:
    """Start on cpu/f32 unless ``init`` was called already."""
    if _state["arch"] is None:
        init()


def current_arch() -> str | None:
    return _state["arch"]


def precision() -> str | None:
    return _state["precision"]


def deterministic() -> bool:
    """Whether CPU kernels run on one thread (see :func:`init`)."""
    return _state["deterministic"]


def real():
    """The Taichi float type of every taichi_dr field (follows ``precision``)."""
    ensure_init()
    return ti.f64 if _state["precision"] == "f64" else ti.f32


def diff() -> dict:
    """Field options of every differentiable taichi_dr field: gradients, and duals when
    ``init(forward_mode=True)``."""
    return {"needs_grad": True, "needs_dual": _state["forward_mode"]}


def np_real():
    import numpy as np

    return np.float64 if precision() == "f64" else np.float32


# Coordinates whose squares stay finite (with headroom for sums of a few squares):
# float32 overflows at 3.4e38, so |x| ≳ 1.8e19 gave NaN pixels.
MAX_MAGNITUDE = {"f32": 1e18, "f64": 1e150}


def check_magnitude(values, what: str, precision_: str | None = None) -> None:
    """Raise :class:`UserError` when ``values`` are too large for ``precision_`` (default:
    the current precision)."""
    import numpy as np

    prec = precision_ or precision() or "f32"
    limit = MAX_MAGNITUDE[prec]
    biggest = float(np.max(np.abs(values))) if np.size(values) else 0.0
    if biggest > limit:
        fix = "rescale the scene (e.g. to metres)" + (" or use precision f64" * (prec == "f32"))
        raise UserError(
            f"{what} reach {biggest:.3g}, beyond {limit:.0e} where {prec} arithmetic overflows; "
            + fix
        )


def require_autodiff() -> None:
    """Raise a clear error when reverse-mode gradients are asked for on an arch where
    Taichi 1.7.4's reverse mode is known to be wrong (vulkan, metal)."""
    ensure_init()
    if _state["arch"] not in AUTODIFF_ARCHS:
        raise UserError(
            f"reverse-mode gradients are not supported on {_state['arch']} (Taichi's "
            "reverse-mode autodiff is wrong there); use --arch cpu or cuda"
        )


class Tape(ti.ad.Tape):
    """``ti.ad.Tape`` that runs no backward pass when its body raised.

    Taichi's tape always differentiates on exit, so an error inside the ``with`` block (a
    :class:`UserError` about NaN, say) would be followed by a backward pass over a partial
    recording, which fails with a second, unrelated exception that hides the first. This
    tape lets the original error through unchanged; use it wherever a tape is entered."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.eval_on_exit = False
        return super().__exit__(exc_type, exc, tb)


def write(field, value) -> None:
    """Set a Taichi field from a NumPy array of its shape (0-d scalar fields included),
    converting to the field's dtype."""
    import numpy as np

    value = np.asarray(value)
    if value.ndim == 0:
        field[None] = value.item()
    else:
        field.from_numpy(np.ascontiguousarray(value, dtype=field.to_numpy().dtype))


@ti.kernel
def _zero(fields: ti.template()):
    for f in ti.static(fields):
        for I in ti.grouped(f):
            f[I] = 0  # broadcast; ti.zero(f[I]) is f[I] · 0, which keeps NaN


def zero_grads(*fields) -> None:
    """Set the gradients of ``fields`` to 0 in one kernel launch (a ``fill`` per field
    costs a launch each; a stage's ``zero_grad`` runs every optimisation step)."""
    _zero(tuple(f.grad for f in fields))
