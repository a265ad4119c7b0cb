"""The optimisation runner shared by the applications (``taichi-dr smoke``, ``taichi-dr fit``).

An application supplies ``step(it) -> {"loss": float, other metrics...}`` and, optionally,
``panels() -> [(H, W, 3) arrays]`` (e.g. target | current | error) and a state (``get() ->
{name: array}``, ``set({name: array})``) to checkpoint. The runner loops with a progress bar,
stops with a clear message when the loss turns NaN/inf, keeps per-iteration records, writes
``checkpoint.npz`` every ``checkpoint_every`` iterations (atomically; ``resume=True`` continues
from it), shows the panels in a GGUI window when a display exists and ``headless`` is false,
and on :meth:`finish` writes ``metrics.json``, ``loss.png`` and ``progress.gif``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import io
from .errors import UserError


class Runner:
    """Drive one optimisation; see the module docstring."""

    def __init__(
        self,
        out_dir,
        app: str,
        settings: dict,
        headless: bool = True,
        checkpoint_every: int = 0,
        resume: bool = False,
        key_metric: str = "loss",
        frame_every: int = 1,
    ):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.app, self.settings = app, dict(settings)
        self.checkpoint_every, self.resume = int(checkpoint_every), resume
        self.key_metric, self.frame_every = key_metric, max(1, int(frame_every))
        self.records: list[dict] = []
        self.frames: list[np.ndarray] = []
        self.wall_time = 0.0
        self._window = None
        self._headless = headless or not os.environ.get("DISPLAY")
        if self._headless:
            reason = "--headless" if headless else "no display (DISPLAY is unset)"
            print(f"{app}: running headless ({reason}); results go to {self.out}")

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.npz"

    def run(self, step, iterations: int, state=None, panels=None) -> list[dict]:
        """Run ``step`` for iterations [start, iterations); returns the per-iteration records."""
        from tqdm import tqdm

        start = self._load_checkpoint(state) if self.resume else 0
        t0 = time.perf_counter()
        bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=self.app)
        for it in bar:
            record = {k: float(v) for k, v in step(it).items()}
            if not np.isfinite(record["loss"]):
                raise UserError(
                    f"{self.app}: the loss became {record['loss']} at iteration {it}; "
                    "lower the learning rate or the time step"
                )
            self.records.append({"iteration": it, **record})
            shown = {"loss": f"{record['loss']:.4g}"}
            if self.key_metric in record:
                shown[self.key_metric] = f"{record[self.key_metric]:.4g}"
            bar.set_postfix(shown)
            last = it == iterations - 1
            if panels is not None and (it % self.frame_every == 0 or last):
                frame = np.concatenate([np.asarray(p, np.float32) for p in panels()], axis=1)
                self.frames.append(frame)
                if not self._show(frame):
                    break
            if (
                state is not None
                and self.checkpoint_every
                and ((it + 1) % self.checkpoint_every == 0 or last)
            ):
                self._save_checkpoint(it + 1, state)
        self.wall_time += time.perf_counter() - t0
        return self.records

    def finish(self, final_metrics: dict) -> dict:
        """Write ``metrics.json`` (settings, per-iteration records, final metrics, wall time),
        ``loss.png`` and ``progress.gif``; returns the metrics written."""
        metrics = {
            "app": self.app,
            "settings": self.settings,
            "iterations": self.records,
            "losses": [r["loss"] for r in self.records],
            "final": final_metrics,
            "wall_time_s": self.wall_time,
        }
        io.save_json(self.out / "metrics.json", metrics)
        self._plot_losses()
        if self.frames:
            io.write_video(self.out / "progress.gif", self.frames)
        return metrics

    # ---- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, iteration, state):
        arrays = {f"state/{k}": np.asarray(v) for k, v in state.get().items()}
        losses = np.array([[r["iteration"], r["loss"]] for r in self.records], dtype=np.float64)
        io.save_npz(
            self.checkpoint_path,
            app=np.array(self.app),
            iteration=np.array(iteration),
            losses=losses.reshape(-1, 2),
            **arrays,
        )

    def _load_checkpoint(self, state) -> int:
        path = self.checkpoint_path
        if not path.is_file():
            raise UserError(f"--resume: no checkpoint at {path}; run once without --resume")
        with np.load(path) as data:
            if str(data["app"]) != self.app:
                raise UserError(
                    f"--resume: {path} belongs to {str(data['app'])!r}, not {self.app!r}; "
                    "use another --out folder"
                )
            arrays = {k[len("state/") :]: data[k] for k in data.files if k.startswith("state/")}
            iteration = int(data["iteration"])
            self.records = [{"iteration": int(i), "loss": float(v)} for i, v in data["losses"]]
        if state is not None:
            state.set(arrays)
        print(f"{self.app}: resumed from {path} at iteration {iteration}")
        return iteration

    # ---- output -------------------------------------------------------------------------------
    def _plot_losses(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        its = [r["iteration"] for r in self.records]
        ax.plot(its, [max(r["loss"], 1e-30) for r in self.records])
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(self.app)
        fig.tight_layout()
        io._atomic(self.out / "loss.png", lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)

    def _show(self, frame) -> bool:
        """Show ``frame`` in the live window; False once the user closed it."""
        if self._headless:
            return True
        import taichi as ti

        h, w = frame.shape[:2]
        if self._window is None:
            self._window = ti.ui.Window(self.app, res=(w, h), vsync=False)
        if not self._window.running:
            return False
        rgb = np.clip(io.linear_to_srgb(frame), 0, 1).astype(np.float32)
        self._window.get_canvas().set_image(np.ascontiguousarray(np.flipud(rgb).transpose(1, 0, 2)))
        self._window.show()
        return True
