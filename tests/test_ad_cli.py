import json

import pytest

from taichi_dr.ad.report import format_table
from taichi_dr.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ad")
    assert main(["ad", "--out", str(out), "--max-n", "16", "--max-forward-n", "4"]) == 0
    return out


def test_ad_command_writes_plots_and_numbers(report):
    for name in ("ad_step_size.png", "ad_swell.png", "ad_cost.png", "ad_switch.png"):
        data = (report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and 5_000 < len(data) < 100_000
    summary = json.loads((report / "ad.json").read_text())
    assert [r["n"] for r in summary["cost"]["rows"]] == [1, 4, 16]
    assert summary["reverse"]["tape-exp x=0.1"] == pytest.approx(8597.45629, rel=1e-8)
    assert summary["reverse"]["stack x=0.1"] == pytest.approx(68.3684507, rel=1e-8)
    best = summary["step_size"]["sin(x) at x=1 | float64 | central"]["h"]
    assert 1e-7 < best < 1e-4


def test_discrete_choices_agree_with_finite_differences_away_from_switches(report):
    """Replayed choices: AD = central differences away from switching points; at them AD is
    one one-sided derivative (ties: smaller index / stable order), a central difference
    averages a kink and blows up at a jump."""
    summary = json.loads((report / "ad.json").read_text())["discrete"]
    assert summary["max_rel_diff_away"] < 1e-7
    at = {r["example"].split(" (")[0]: r for r in summary["agreement"] if r["where"] != "away"}
    nn, perm, branch = at["nearest neighbour"], at["permutation"], at["branch"]
    assert nn["ad"] == pytest.approx(1.0) and nn["left"] == pytest.approx(1.0, abs=1e-6)
    assert nn["right"] == pytest.approx(-1.0, abs=1e-6) and abs(nn["central_fd"]) < 1e-6
    assert (perm["ad"], perm["left"], perm["right"]) == (2.0, 2.0, 3.0)
    assert perm["central_fd"] == pytest.approx(2.5, rel=1e-6)
    assert branch["ad"] == pytest.approx(2.0) and branch["central_fd"] > 1e5  # 0.5 / 2h


def test_format_table_aligns_text_left_numbers_right():
    text = format_table(["name", "value"], [["a", 1.5], ["bb", None]])
    assert text.splitlines() == ["name  value", "----  -----", "a       1.5", "bb        -"]


def test_demo_runs_the_same(tmp_path, capsys):
    from demos.ad_basics import main as demo_main

    assert demo_main(["--out", str(tmp_path), "--max-n", "4", "--max-forward-n", "1"]) == 0
    printed = capsys.readouterr().out
    assert "WRONG" in printed and "8597.456295" in printed
    assert (tmp_path / "ad_cost.png").is_file()


@pytest.mark.parametrize(
    "flags, message",
    [(["--max-n", "0"], "n must be an integer ≥ 1"), (["--max-forward-n", "0"], "must be ≥ 1")],
)
def test_bad_sizes_are_one_line_errors(tmp_path, capsys, flags, message):
    assert main(["ad", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
