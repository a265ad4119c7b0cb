"""The torch teaching demo (demos/fit_cube_torch.py) as a user runs it: a subprocess at
small settings whose printed worst-corner error shrinks."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_fit_cube_torch():
    arch = os.environ.get("TAICHI_DR_TEST_ARCH", "cpu")
    res = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "fit_cube_torch.py"), "--iters", "120",
         "--size", "32", "--arch", arch],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = re.findall(r"iteration +(\d+): loss ([\d.]+), worst corner off by ([\d.]+)", res.stdout)
    assert [int(it) for it, _, _ in lines] == [0, 50, 100, 119]
    losses = [float(loss) for _, loss, _ in lines]
    errors = [float(e) for _, _, e in lines]
    assert losses[-1] < 0.3 * losses[0]
    assert errors[-1] < 0.6 * errors[0]
