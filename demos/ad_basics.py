"""Derivatives from first principles: the same as ``taichi-dr ad`` (tables + plots in --out)."""

from taichi_dr.cli import main as cli_main


def main(argv=None) -> int:
    return cli_main(["ad", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
