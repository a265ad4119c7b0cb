"""The optimisation runner shared by the applications (``taichi-dr smoke``, ``taichi-dr fit``).

An application supplies ``step(it) -> {"loss": float, other metrics...}`` (``"done": True``
ends the run after that iteration, e.g. once the metric's target is met) and, optionally,
``panels() -> [(H, W, 3) arrays]`` (e.g. target | current | error, the GIF frames), a state
(``get() -> {name: array}``, ``set({name: array})``) to checkpoint, and a *dashboard* for the
live view (:mod:`taichi_dr.apps.live`): an object with ``views`` (count), ``panels(view)`` (the
panels of view number ``view``), ``orbit`` (a start :class:`~taichi_dr.apps.orbit.ViewState` or
None) and ``render(view_state) -> (H, W, 3)`` (the current model from that orbit camera).

The runner loops with a progress bar, stops with a clear message when the loss turns
NaN/inf, keeps per-iteration records, writes ``checkpoint.npz`` every ``checkpoint_every``
iterations (atomically; ``resume=True`` continues from it, after checking that the file is
intact, finite and fits ``iterations``), stops after the current iteration on Ctrl-C
(``interrupted``; a checkpoint at that iteration, then the outputs as usual; a second
Ctrl-C quits at once), and, when a display exists and
``headless`` is false, shows the dashboard (or the panels) in a GGUI window whose keys pause,
single-step, switch the view and stop (``live.CONTROLS``). :meth:`finish` writes
``metrics.json``, ``loss.png``, ``progress.gif`` and ``dashboard.png`` (the final dashboard:
the window's picture, also when headless).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import io
from ..errors import UserError
from . import live


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
        self.out = io.prepare_output(out_dir)
        self.app, self.settings = app, dict(settings)
        self.checkpoint_every, self.resume = int(checkpoint_every), resume
        self.key_metric, self.frame_every = key_metric, max(1, int(frame_every))
        self.records: list[dict] = []
        self.frames: list[np.ndarray] = []
        self.wall_time = 0.0
        self._t0 = None  # perf_counter at the start of the current run
        self._window = None
        self._drawn, self._picture_cache = None, None
        self.live: live.LiveState | None = None
        self.dashboard = None
        self.interrupted = False  # Ctrl-C stopped the last run
        self._headless = headless or not os.environ.get("DISPLAY")
        if self._headless:
            reason = "--headless" if headless else "no display (DISPLAY is unset)"
            print(f"{app}: running headless ({reason}); results go to {self.out}")

    @classmethod
    def from_args(cls, args, app: str, settings: dict | None = None, key_metric="loss", **kw):
        """A runner from a command's options (``out``, ``headless``, ``checkpoint_every``,
        ``resume``, ``frame_every``; ``kw`` overrides them); ``settings`` default to all
        of the options (recorded in metrics.json)."""
        options = dict(
            out_dir=args.out,
            headless=args.headless,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            frame_every=args.frame_every,
        )
        options.update(kw)
        if settings is None:
            settings = {k: v for k, v in vars(args).items() if k != "func"}
        return cls(app=app, settings=settings, key_metric=key_metric, **options)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.npz"

    def run(self, step, iterations: int, state=None, panels=None, dashboard=None) -> list[dict]:
        """Run ``step`` for iterations [start, iterations) (fewer when the user stops the
        live view or presses Ctrl-C); returns the per-iteration records."""
        from tqdm import tqdm

        start = self._load_checkpoint(state, iterations) if self.resume else 0
        self.dashboard = dashboard
        views = dashboard.views if dashboard is not None else 1
        self.live = live.LiveState(views, orbit=getattr(dashboard, "orbit", None))
        self._t0 = time.perf_counter()
        bar = tqdm(initial=start, total=iterations, desc=self.app)
        it, done = start, False
        with self._ctrl_c() as pressed, bar:  # closing the bar ends its line, also on errors
            while it < iterations and not done:
                self.interrupted = bool(pressed)
                if self.interrupted or not self._poll(panels):
                    why = "interrupted (Ctrl-C)" if self.interrupted else "stopped"
                    print(f"\n{self.app}: {why} at iteration {it}", flush=True)
                    if state is not None and self.checkpoint_every and it > start:
                        self._save_checkpoint(it, state)  # --resume continues from here
                    break
                if self.live.take_step():
                    done = self._iterate(it, iterations, step, state, panels, bar)
                    it += 1
        self.wall_time = self._elapsed()
        self._t0 = None
        return self.records

    def _elapsed(self) -> float:
        """Seconds spent in :meth:`run`, over all runs of this output folder (a resumed
        run starts from the checkpoint's time)."""
        return self.wall_time + (time.perf_counter() - self._t0 if self._t0 else 0.0)

    def _iterate(self, it, iterations, step, state, panels, bar) -> bool:
        """Iteration ``it``: step, record, frame, checkpoint; True when the step says done."""
        record = {k: float(v) for k, v in step(it).items()}
        done = bool(record.pop("done", False))
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
        bar.update(1)
        last = it == iterations - 1 or done
        if panels is not None and (it % self.frame_every == 0 or last):
            self.frames.append(_side_by_side(panels()).astype(np.float32))
        if (
            state is not None
            and self.checkpoint_every
            and ((it + 1) % self.checkpoint_every == 0 or last)
        ):
            self._save_checkpoint(it + 1, state)
        if done:
            print(f"\n{self.app}: done after {it + 1} iterations", flush=True)
        return done

    @contextmanager
    def _ctrl_c(self):
        """Yields a list that becomes non-empty on the first Ctrl-C (SIGINT) while the block
        runs, so the loop can stop between iterations with a consistent state; the second
        Ctrl-C raises KeyboardInterrupt as usual. Only in the main thread."""
        pressed: list = []
        if threading.current_thread() is not threading.main_thread():
            yield pressed
            return

        def handler(signum, frame):
            pressed.append(signum)
            signal.signal(signal.SIGINT, previous)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield pressed
        finally:
            signal.signal(signal.SIGINT, previous)

    def finish(self, final_metrics: dict) -> dict:
        """Write ``metrics.json`` (settings, per-iteration records, final metrics, wall time),
        ``loss.png``, ``progress.gif`` and, with a dashboard, ``dashboard.png``; returns the
        metrics written."""
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
        if self.dashboard is not None:
            io.save_image(self.out / "dashboard.png", self.picture(None))
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
            wall_time=np.array(self._elapsed()),
            **arrays,
        )

    def _load_checkpoint(self, state, iterations: int) -> int:
        """Restore ``state`` and the records from ``checkpoint.npz``; returns its iteration.
        A damaged file, an unknown layout, NaN/inf values or an iteration outside
        [0, iterations] is a :class:`UserError` naming the file and the fix."""
        path = self.checkpoint_path
        if not path.is_file():
            raise UserError(f"--resume: no checkpoint at {path}; run once without --resume")
        damaged = f"--resume: {path} is damaged or not a checkpoint"
        fix = "delete it (or pick another --out folder) and run without --resume"
        try:
            with np.load(path, allow_pickle=False) as data:
                app = str(data["app"])
                iteration = data["iteration"]
                losses = np.asarray(data["losses"], dtype=np.float64)
                wall_time = float(data["wall_time"]) if "wall_time" in data.files else 0.0
                arrays = {k[6:]: data[k] for k in data.files if k.startswith("state/")}
        except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            raise UserError(f"{damaged} ({type(exc).__name__}); {fix}") from None
        if app != self.app:
            raise UserError(
                f"--resume: {path} belongs to {app!r}, not {self.app!r}; use another --out folder"
            )
        if iteration.shape != () or iteration.dtype.kind not in "iu" or iteration < 0:
            raise UserError(f"{damaged} (iteration {iteration}); {fix}")
        iteration = int(iteration)
        if iteration > iterations:
            raise UserError(
                f"--resume: {path} is at iteration {iteration}, past the {iterations} asked for; "
                f"pass --iters {iteration + 1} or more, or another --out folder"
            )
        numbers = [losses, *(a for a in arrays.values() if a.dtype.kind in "fiu")]
        if losses.ndim != 2 or losses.shape[1] != 2 or len(losses) > iteration:
            raise UserError(f"{damaged} (loss records of shape {losses.shape}); {fix}")
        if not all(np.all(np.isfinite(a)) for a in numbers) or not np.isfinite(wall_time):
            raise UserError(f"--resume: {path} holds NaN or inf values; {fix}")
        if state is not None:
            state.set(arrays)
        self.records = [{"iteration": int(i), "loss": float(v)} for i, v in losses]
        self.wall_time = wall_time
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
        io.atomic_write(self.out / "loss.png", lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)

    def picture(self, panels) -> np.ndarray:
        """What the window shows now (linear RGB, row 0 at the top): the dashboard of the
        selected view, or the ``panels()`` side by side without a dashboard."""
        if self.dashboard is None:
            return _side_by_side(panels())
        d, state = self.dashboard, self.live
        orbit = d.render(state.orbit) if state.orbit is not None else None
        losses = [r["loss"] for r in self.records]
        return live.compose(d.panels(state.view), orbit, losses)

    def _poll(self, panels) -> bool:
        """The live window's frame: input, a redraw when something changed, show; False
        once the user closed the window or pressed q. Headless: always True."""
        if self._headless or (panels is None and self.dashboard is None):
            return True
        import taichi as ti

        state = self.live
        key = (len(self.records), state.view, state.orbit.key() if state.orbit else None)
        if key != self._drawn:
            rgb = np.clip(io.linear_to_srgb(live.upscale(self.picture(panels))), 0, 1)
            self._picture_cache = np.ascontiguousarray(np.flipud(rgb).transpose(1, 0, 2))
            self._picture_cache = self._picture_cache.astype(np.float32)
            self._drawn = key
        if self._window is None:
            w, h = self._picture_cache.shape[:2]
            self._window = ti.ui.Window(self.app, res=(w, h), vsync=False)
            print(live.CONTROLS, flush=True)
        window = self._window
        if not window.running:
            return False
        for event in window.get_events(ti.ui.PRESS):
            before = state.describe()
            state.press(event.key)
            if state.describe() != before:
                print(f"{self.app}: {state.describe()}", flush=True)
        state.pointer(
            window.get_cursor_pos(), window.is_pressed(ti.ui.LMB), window.is_pressed(ti.ui.RMB)
        )
        window.get_canvas().set_image(self._picture_cache)
        window.show()
        if state.paused and not state.pending:
            time.sleep(1 / 60)  # idle while paused
        return state.running


def _side_by_side(images) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float64) for p in images], axis=1)
