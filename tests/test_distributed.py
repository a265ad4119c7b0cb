"""demos/fit_distributed.py: two processes on this machine over gloo (loopback) fit one
mesh; torch's DistributedDataParallel keeps their parameters identical, the loss falls."""

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed; pip install 'taichi-dr[torch]'")

from demos import fit_distributed  # noqa: E402
from taichi_dr import UserError  # noqa: E402


def test_two_processes_fit_one_mesh():
    results = fit_distributed.run(["--procs", "2", "--views", "4", "--size", "24", "--iters", "6"])
    assert [r["rank"] for r in results] == [0, 1]
    a, b = results
    assert a["checksum"] == b["checksum"] > 0  # the same Adam steps on every rank
    assert a["loss"] == b["loss"]  # the all-reduced loss
    assert a["loss"][-1] < 0.8 * a["loss"][0]


def test_uninitialised_distributed_is_a_user_error():
    args = fit_distributed.parse_args(["--procs", "1", "--views", "2"])
    with pytest.raises(UserError, match="torch.distributed is not initialised"):
        fit_distributed.fit(args)


def test_more_processes_than_views_is_a_user_error():
    with pytest.raises(UserError, match="--procs"):
        fit_distributed.parse_args(["--procs", "3", "--views", "2"])
