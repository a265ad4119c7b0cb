"""The README's Python example runs as written (in a fresh process, float32)."""

import os
import re
import subprocess
import sys
from pathlib import Path


def test_readme_example_runs(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\nimport taichi as ti\n(.*?)```", text, re.S).group(0)
    script = tmp_path / "example.py"
    script.write_text(code.removeprefix("```python\n").removesuffix("```"))
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    loss, grad = map(float, res.stdout.split()[-2:])
    assert loss > 0 and grad > 0
