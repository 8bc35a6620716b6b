"""``experiments/sampling_sweep.py --combine`` picks one sampling setting for every task.

``build-store``'s default sampling is that pick, so the rule must weigh each task equally and
compare settings over the same tasks: a setting that one task's grid lacks has no mean."""

from __future__ import annotations

import json
import sys

import pytest
from script_helpers import load_script


@pytest.fixture()
def sweep(monkeypatch):
    return load_script("sampling_sweep", monkeypatch)


def _report(path, task: str, settings: dict[str, tuple[float, float]], chosen: str) -> None:
    """A sweep report of one task: setting -> (yield, mean pairwise cosine)."""
    grid = {n: {"yield": y, "pairwise_cosine": c} for n, (y, c) in settings.items()}
    path.write_text(json.dumps({"tasks": {task: {"settings": grid, "chosen": chosen}}}))


def test_the_pick_is_the_least_alike_of_the_settings_close_to_the_best_mean(
    sweep, tmp_path, monkeypatch
):
    a, b = tmp_path / "sampling-a.json", tmp_path / "sampling-b.json"
    # "cold" has the best mean yield (0.50); "warm" is 0.04 below it and more varied;
    # "hot" is the most varied but 0.25 below; "odd" was swept on task a only
    _report(a, "a", {"cold": (0.60, 0.40), "warm": (0.50, 0.30), "hot": (0.20, 0.10),
                     "odd": (0.90, 0.05)}, "odd")  # fmt: skip
    _report(b, "b", {"cold": (0.40, 0.30), "warm": (0.42, 0.20), "hot": (0.30, 0.10)}, "warm")
    out = tmp_path / "sampling"
    argv = ["sampling_sweep.py", "--combine", "--out", str(out), str(a), str(b)]
    monkeypatch.setattr(sys, "argv", argv)
    sweep.main()
    text = out.with_suffix(".md").read_text()
    assert "Chosen across tasks: **warm**." in text
    assert "| **warm** | 0.50 | **0.42** | 0.460 | 0.250 |" in text
    assert "| cold | 0.60 | 0.40 | 0.500 | 0.350 |" in text
    assert "odd" not in text.split("| setting |")[1]  # not in b's grid: no mean over a alone


def test_combine_without_reports_is_refused(sweep, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sampling_sweep.py", "--combine"])
    with pytest.raises(SystemExit):
        sweep.main()
    assert "needs the sweep reports" in capsys.readouterr().err
