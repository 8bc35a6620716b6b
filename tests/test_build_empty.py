"""Issue 18.5: a build that keeps nothing fails with the reason instead of writing 0 entries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_build_store import BagOfWords, _record

import retrikt.generator.build as build
from retrikt.errors import RetriktError
from retrikt.generator.build import BuildConfig, empty_build_reason
from retrikt.generator.sampler import SamplingConfig

CONFIG = BuildConfig(
    task="cb", data_dir=None, out="unused", rl="none", sampling=SamplingConfig(max_new_tokens=96)
)
STATS = {"valid": 0, "duplicates": 0}


def test_all_outputs_cut_at_the_token_limit():
    records = [_record(i, f"Premise {i} and then the limit", "", 0, None, valid=False)
               for i in range(6)]  # fmt: skip
    assert empty_build_reason(records, STATS, CONFIG).startswith(
        "0 of 6 outputs parsed: all were cut at --max-new-tokens 96"
    )


def test_outputs_parsed_but_all_duplicates():
    records = [_record(i, "Rain fell.", "It rained.", 0, [0.8, 0.1, 0.1]) for i in range(3)]
    reason = empty_build_reason(records, {"valid": 3, "duplicates": 3}, CONFIG)
    assert reason.startswith("3 of 3 outputs parsed, 3 valid, 3 of those duplicates")


def test_build_store_refuses_to_write_an_empty_store(tmp_path, monkeypatch):
    """The stages before selection are stubbed: only the final part of build_store runs."""
    records = [_record(i, f"Premise {i}", "", 0, None, valid=False) for i in range(4)]
    stubs = {
        "shard_info": lambda: (0, 1),
        "load_task_data": lambda config: build.TaskData(build.get_task("cb"), [], []),
        "prepare_teacher": lambda config, data, rank: (SimpleNamespace(id="teacher"), {}),
        "training_entries": lambda data, teacher, encoder: ([], np.zeros((0, 64))),
        "prepare_generator": lambda *args: None,
        "generate_records": lambda *args: records,
        "select_entries": lambda *args: ([], None, {"valid": 0, "duplicates": 0}),
    }
    for name, stub in stubs.items():
        monkeypatch.setattr(build, name, stub)
    monkeypatch.setattr("retrikt.encoder.Encoder", lambda name: BagOfWords())
    config = BuildConfig(task="cb", data_dir=None, out=str(tmp_path / "store"), rl="none")
    with pytest.raises(RetriktError, match="cb: 0 of 4 outputs parsed: all were cut"):
        build.build_store(config)
    assert not (tmp_path / "store").exists()
