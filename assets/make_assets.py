"""Regenerate the small committed example meshes in this folder, reproducibly.

    python assets/make_assets.py [--out DIR]

Writes ``sphere.obj`` (icosphere, 1,280 faces), ``blob.obj`` (non-convex bumpy sphere,
5,120 faces), ``torus.obj`` (genus 1, 2,304 faces) and ``textured.obj`` + ``textured.mtl`` +
``textured.png`` (UV sphere with a 256x256 checkerboard/gradient texture). Larger meshes for
benchmarks come from :func:`taichi_dr.scene.large_mesh` at run time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from taichi_dr import scene

ASSETS = {
    "sphere": lambda: scene.icosphere(3),
    "blob": lambda: scene.blob(4, seed=0),
    "torus": lambda: scene.torus(),
    "textured": lambda: scene.textured_sphere(),
}


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    written = []
    for name, make in ASSETS.items():
        scene.save_obj(args.out / f"{name}.obj", make())
        written += sorted(args.out.glob(f"{name}.*"))
    for path in written:
        print(f"{path}: {path.stat().st_size:,} bytes")
    return written


if __name__ == "__main__":
    main()
