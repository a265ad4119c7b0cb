"""The README gallery: every ``taichi-dr fit`` application at its full default settings,
headless, one after the other (about 15 minutes on a 2-core CPU).

    python demos/gallery.py [--apps geometry pose ...] [--out runs/gallery]
                            [--img-dir docs/img] [other taichi-dr fit flags]

Writes ``IMG_DIR/fit_NAME.gif`` (target | current | error of the first view over the
iterations, each panel scaled to 96 pixels high, at most 24 frames, ≤ 300 KB),
``IMG_DIR/fit_dashboard.png`` (the first application's final live-view picture) and prints
the numbers reached as a markdown table (also ``OUT/gallery.md``). Flags it does not know
go to every fit (e.g. ``--resolution 32 --iters 2`` for a quick try).
"""

import argparse
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from taichi_dr.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


CASES = {  # gallery name: taichi-dr fit arguments
    "geometry": ["geometry"],
    "pose": ["pose"],
    "texture": ["texture"],
    "material": ["material"],
    "material_phong": ["material", "--shading", "phong"],
    "lighting": ["lighting"],
    "joint": ["joint"],
}
PANEL_HEIGHT, MAX_FRAMES, MAX_BYTES = 96, 24, 300_000


def small_gif(src: Path, dst: Path) -> int:
    """``src`` GIF resampled to PANEL_HEIGHT rows and at most MAX_FRAMES frames (the last
    one always kept and held 2 s), halving the frames until it fits MAX_BYTES; returns the
    size in bytes."""
    frames = iio.imread(src, index=None)[..., :3]
    h, w = frames.shape[1:3]
    size = (max(1, round(w * PANEL_HEIGHT / h)), PANEL_HEIGHT)
    scaled = [np.asarray(Image.fromarray(f).resize(size, Image.LANCZOS)) for f in frames]
    count = MAX_FRAMES
    while True:
        pick = np.unique(np.linspace(0, len(scaled) - 1, min(count, len(scaled))).round())
        chosen = [scaled[int(i)] for i in pick]
        durations = [150] * (len(chosen) - 1) + [2000]
        iio.imwrite(dst, np.stack(chosen), duration=durations, loop=0)
        if dst.stat().st_size <= MAX_BYTES or count <= 2:
            return dst.stat().st_size
        count //= 2


def small_png(src: Path, dst: Path, height: int = 2 * PANEL_HEIGHT) -> None:
    """``src`` image resampled to ``height`` rows."""
    img = Image.fromarray(iio.imread(src)[..., :3])
    img.resize((max(1, round(img.width * height / img.height)), height), Image.LANCZOS).save(dst)


def _row(name: str, metrics: dict) -> str:
    s, final = metrics["settings"], metrics["final"]
    shown = {k: v for k, v in final.items() if k.endswith(("_rel", "_deg", "iou", "psnr_visible"))}
    numbers = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
    its = len(metrics["losses"])
    return (
        f"| {name} | {s['resolution']}², {s['views']}, {its} | {numbers} | "
        f"{final.get('goal_met')} ({final.get('iterations_to_goal')}) | "
        f"{metrics['wall_time_s']:.0f} s |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", default="runs/gallery", help="folder for the fit runs")
    parser.add_argument("--img-dir", default=str(ROOT / "docs" / "img"), help="GIF folder")
    args, extra = parser.parse_known_args(argv)
    out, img_dir = Path(args.out), Path(args.img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        "| app | res², views, iterations run | final metrics | goal met (first iteration) "
        "| wall time |",
        "|---|---|---|---|---|",
    ]
    for name in args.apps:
        run = out / name
        code = cli_main(["fit", *CASES[name], "--headless", "--out", str(run), *extra])
        if code != 0:
            return code
        metrics = json.loads((run / "metrics.json").read_text())
        size = small_gif(run / "progress.gif", img_dir / f"fit_{name}.gif")
        print(f"gallery: {img_dir / f'fit_{name}.gif'} ({size / 1000:.0f} KB)", flush=True)
        rows.append(_row(name, metrics))
        if name == args.apps[0]:
            small_png(run / "dashboard.png", img_dir / "fit_dashboard.png")
    table = "\n".join(rows) + "\n"
    (out / "gallery.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
