"""Images, arrays and videos on disk. Every write is atomic (temporary file, then rename).

Images in memory are ``(H, W, C)`` float arrays, row 0 at the top, linear colour in
[0, ∞); they are sRGB-encoded only when written as 8-bit files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

TMP_PREFIX = ".tmp-"  # temporary files are named .tmp-PID-XXXX: the writer's process id


def atomic_write(path, write, suffix=None):
    """Create ``path`` (and its folders) all at once: ``write(tmp)`` fills a temporary file
    beside it (``suffix``: its extension, default the path's), which then replaces ``path``,
    so a reader never sees a half-written file and an interrupted run leaves the old one
    (a killed run leaves its temporary file: :func:`prepare_output` removes it later)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TMP_PREFIX}{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix or path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def prepare_output(folder) -> Path:
    """Make sure ``folder`` is a writable folder before any work starts (created if
    missing), and remove the temporary files that killed runs left in it (those whose
    writer process no longer runs). Raises :class:`UserError` naming the folder."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {str(path)!r} is a file, not a folder; pick a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=f"{TMP_PREFIX}{os.getpid()}-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UserError(
            f"cannot write to the output folder {str(path)!r} ({exc.strerror}); "
            "pick a writable folder with --out"
        ) from None
    for stale in path.glob(TMP_PREFIX + "*"):
        if stale.is_file() and not _running(stale.name[len(TMP_PREFIX) :].split("-")[0]):
            stale.unlink(missing_ok=True)
    return path


def _running(pid: str) -> bool:
    """Whether process ``pid`` (a string from a file name) exists on this machine."""
    if not pid.isdigit():
        return False  # not written by atomic_write: nobody owns it
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # another user's live process
    except (ProcessLookupError, OverflowError):
        return False
    return True


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


def to_uint8(image: np.ndarray, srgb: bool = True) -> np.ndarray:
    """Linear float image (H, W[, C]) → uint8, sRGB-encoded unless ``srgb=False``."""
    x = np.asarray(image, dtype=np.float64)
    if srgb:
        if x.ndim == 3 and x.shape[2] == 4:  # alpha stays linear
            x = np.concatenate([linear_to_srgb(x[..., :3]), np.clip(x[..., 3:], 0, 1)], axis=2)
        else:
            x = linear_to_srgb(x)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path, image: np.ndarray, srgb: bool = True) -> Path:
    """Write a linear float image (H, W), (H, W, 3) or (H, W, 4) as PNG/JPEG."""
    import imageio.v3 as iio

    data = to_uint8(image, srgb)
    return atomic_write(path, lambda tmp: iio.imwrite(tmp, data))


def load_image(path, srgb: bool = True) -> np.ndarray:
    """Read an image file as linear float32 (H, W, C) in [0, 1] (sRGB-decoded unless
    ``srgb=False``; alpha is never decoded)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file {str(path)!r} does not exist; check the path")
    try:  # Pillow only: other plugins turn a damaged PNG into advice to install ffmpeg
        data = np.asarray(iio.imread(path, plugin="pillow"))
    except Exception:  # imageio raises many types
        raise UserError(
            f"cannot read image {str(path)!r}: the file is damaged or not in an image format "
            "Pillow reads (PNG, JPEG, BMP, TIFF, ...); re-export it as PNG"
        ) from None
    scale = 65535.0 if data.dtype == np.uint16 else 255.0 if data.dtype == np.uint8 else 1.0
    x = data.astype(np.float32) / scale
    if x.ndim == 2:
        x = x[..., None]
    if srgb:
        c = min(x.shape[2], 3)
        x[..., :c] = srgb_to_linear(x[..., :c])
    return x.astype(np.float32)


def save_npz(path, **arrays) -> Path:
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


def save_json(path, data) -> Path:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=float)

    return atomic_write(path, write)


def write_video(path, frames, fps: int = 10) -> Path:
    """Write linear float frames (N, H, W, 3) as GIF or MP4 (by the file's suffix)."""
    import imageio.v3 as iio

    data = np.stack([to_uint8(f) for f in frames])
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return atomic_write(path, lambda tmp: iio.imwrite(tmp, data, duration=1000 / fps, loop=0))
    if data.shape[1] % 2 or data.shape[2] % 2:  # libx264 wants even sizes
        data = np.pad(data, ((0, 0), (0, data.shape[1] % 2), (0, data.shape[2] % 2), (0, 0)))
    return atomic_write(path, lambda tmp: iio.imwrite(tmp, data, fps=fps, codec="libx264"))
