"""Configs are the single source of flags, help, defaults and validation."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from retrikt.config import Config, DefaultsHelpFormatter, add_arguments, from_args, option
from retrikt.errors import ConfigError


@dataclass
class Toy(Config):
    name: str = option(help="a required name")
    steps: int = option(10, "optimisation steps", min=1)
    share: float = option(0.5, "a share", min=0, below=1)
    mode: str = option("text", "how to start", choices=("text", "random"))
    limit: int | None = option(None, "optional cap", min=1)
    shuffle: bool = option(True, "shuffle each epoch")
    verbose: bool = option(False, "log more")
    internal: int = option(3, "not on the command line", cli=False)


def parse(argv: list[str]) -> Toy:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy, required=("name",))
    return from_args(Toy, parser.parse_args(argv))


def test_flags_come_from_the_fields_with_their_defaults_and_help(capsys):
    config = parse(["--name", "a"])
    assert config == Toy(name="a")
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = capsys.readouterr().out
    assert "optimisation steps (default: 10)" in out
    assert "--no-shuffle" in out and "--verbose" in out and "--internal" not in out


def test_flags_override_and_bools_flip():
    config = parse(["--name", "a", "--steps", "3", "--no-shuffle", "--verbose", "--limit", "7"])
    assert (config.steps, config.shuffle, config.verbose, config.limit) == (3, False, True, 7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "txet"}, "Toy.mode (--mode) must be one of text, random, not 'txet'"),
        ({"steps": 0}, "Toy.steps (--steps) must be at least 1, not 0"),
        ({"share": 1.0}, "Toy.share (--share) must be below 1, not 1.0"),
        ({"limit": 0}, "Toy.limit (--limit) must be at least 1"),
        ({"steps": 2.5}, "Toy.steps (--steps) must be int, not 2.5"),
        ({"name": None}, "Toy.name (--name) is required"),
    ],
)
def test_bad_values_name_the_field_and_what_is_accepted(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Toy(**{"name": "a", **overrides})


def test_from_dict_refuses_unknown_keys_and_round_trips():
    config = Toy(name="a", steps=4)
    assert Toy.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown Toy keys stesp"):
        Toy.from_dict({"name": "a", "stesp": 4}, source="run/config.json")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Toy.from_dict([], source="run/config.json")


def test_a_prefix_gives_a_nested_config_its_own_flags():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy, required=("name",))
    add_arguments(parser, Toy, prefix="rl_", include=("steps", "mode"))
    args = parser.parse_args(["--name", "a", "--steps", "2", "--rl-steps", "5"])
    assert from_args(Toy, args).steps == 2
    assert from_args(Toy, args, prefix="rl_", name="b") == Toy(name="b", steps=5)
    assert "rl_share" not in vars(parser.parse_args(["--name", "a"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "a", "--rl-share", "0.1"])


def test_defaults_help_formatter_shows_only_real_defaults() -> None:
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="student seeds")
    parser.add_argument("--retime", type=int, default=0, help="rounds")
    parser.add_argument("--store", default="", help="a store (default: built)")
    parser.add_argument("--teacher", action="append", default=[], help="a teacher")
    parser.add_argument("--data-dir", help="the data")
    parser.add_argument("--quick", action="store_true", help="run less")
    text = " ".join(parser.format_help().split())
    assert "student seeds (default: 0,1,2)" in text
    assert "rounds (default: 0)" in text
    assert "a store (default: built) --teacher" in text
    assert "a teacher --data-dir" in text
    assert "the data --quick" in text
    assert text.endswith("run less")
