"""Dataclass configs as the single source of CLI flags, help text, defaults and validation.

A config field carries its help (and, for the CLI, its flag spelling) in its metadata, as
peft's config classes do::

    @dataclass
    class SamplingConfig(Config):
        temperature: float = option(0.8, "sampling temperature (the store's and RL's)", min=0)

``add_arguments(parser, SamplingConfig)`` writes one ``--temperature`` flag from it, and
``from_args(SamplingConfig, args)`` builds the config back, so a default or a help text
exists once. ``Config.__post_init__`` checks every field against the bounds and choices given
to ``option`` and raises :class:`~retrikt.errors.ConfigError` naming the field, the value and
what would be accepted. ``Config.from_dict`` refuses keys this version does not know
(a saved folder from a newer version, or a typo) instead of dropping them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Self

from retrikt.errors import ConfigError

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    below: float | None = None,
    above: float | None = None,
    flag: str | None = None,
    cli: bool = True,
    default_factory: Any = _MISSING,
) -> Any:
    """A config field with its help text, accepted values and (optional) flag spelling.

    ``min``/``max`` are inclusive bounds, ``below``/``above`` exclusive ones. ``flag``
    renames the CLI flag (a bool whose default is True becomes ``--no-<name>`` by default);
    ``cli=False`` keeps a field out of the command line.
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max, "below": below}
    meta |= {"above": above}
    meta |= {"flag": flag, "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of ``int``, ``int | None`` and the like."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return rest[0], len(rest) < len(args)
    return annotation, False


@dataclasses.dataclass
class Config:
    """Base of RetriKT's configs: validation on creation, strict loading from a dict."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            kind, optional = _base_type(hints[f.name])
            if value is None:
                if not optional:
                    raise ConfigError(f"{self._where(f)} is required")
                continue
            if kind in (int, float) and not isinstance(value, bool):
                if not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                    raise ConfigError(f"{self._where(f)} must be {kind.__name__}, not {value!r}")
                setattr(self, f.name, kind(value))
                self._check_bounds(f, value)
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                accepted = ", ".join(map(str, choices))
                raise ConfigError(f"{self._where(f)} must be one of {accepted}, not {value!r}")

    def _check_bounds(self, f: dataclasses.Field, value: float) -> None:
        meta = f.metadata
        if meta.get("min") is not None and value < meta["min"]:
            raise ConfigError(f"{self._where(f)} must be at least {meta['min']}, not {value}")
        if meta.get("max") is not None and value > meta["max"]:
            raise ConfigError(f"{self._where(f)} must be at most {meta['max']}, not {value}")
        if meta.get("below") is not None and value >= meta["below"]:
            raise ConfigError(f"{self._where(f)} must be below {meta['below']}, not {value}")
        if meta.get("above") is not None and value <= meta["above"]:
            raise ConfigError(f"{self._where(f)} must be above {meta['above']}, not {value}")

    def _where(self, f: dataclasses.Field) -> str:
        return f"{type(self).__name__}.{f.name} ({flag_of(f)})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    #: Options added after results were cached under keys made from ``to_dict``: ``key_dict``
    #: leaves them out while they have their defaults, so those keys (and caches) stay valid.
    LATER_OPTIONS: typing.ClassVar[tuple[str, ...]] = ()

    def key_dict(self) -> dict[str, Any]:
        """``to_dict`` for cache keys: later options at their defaults are left out."""
        data = self.to_dict()
        for f in dataclasses.fields(self):
            if f.name in self.LATER_OPTIONS:
                default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
                if getattr(self, f.name) == default:
                    del data[f.name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Self:
        """Build from saved JSON, refusing keys this version of the config does not have."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown {cls.__name__} keys {', '.join(unknown)} (written by a "
                f"newer RetriKT, or misspelt); known keys: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as err:  # a required key is missing
            raise ConfigError(f"{source}: {err}") from None


def flag_of(f: dataclasses.Field, prefix: str = "") -> str:
    """The CLI flag of a field: ``--[prefix-]name-with-dashes``, ``--no-name`` for a True bool."""
    if f.metadata.get("flag") and not prefix:
        return f.metadata["flag"]
    name = f"{prefix}{f.name}".replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Config],
    *,
    exclude: Sequence[str] = (),
    include: Sequence[str] | None = None,
    required: Sequence[str] = (),
    prefix: str = "",
) -> None:
    """One flag per CLI field of ``cls``, with its help, type, default and choices.

    Every flag's argparse default is ``SUPPRESS``, so :func:`from_args` sees only what the
    user typed and the dataclass default applies otherwise (the help shows that default).
    ``prefix`` (``"rl_"``) gives a nested config its own flags (``--rl-steps``), and
    ``include`` keeps only the fields worth a flag.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        wanted = include is None or f.name in include
        if not f.metadata.get("cli", True) or f.name in exclude or not wanted:
            continue
        kind, _ = _base_type(hints[f.name])
        flag, meta = flag_of(f, prefix), f.metadata
        help_text = meta.get("help", "")
        has_default = f.default is not _MISSING
        if kind is bool:
            store = "store_false" if f.default is True else "store_true"
            if f.default is True:
                help_text = f"{help_text} (on by default; this flag turns it off)"
            parser.add_argument(
                flag, dest=prefix + f.name, action=store, default=argparse.SUPPRESS, help=help_text
            )
            continue
        if has_default and f.default is not None:
            help_text = f"{help_text} (default: {f.default})"
        parser.add_argument(
            flag,
            dest=prefix + f.name,
            type=kind if kind in (int, float, str) else str,
            choices=meta.get("choices"),
            required=f.name in required,
            default=argparse.SUPPRESS,
            help=help_text,
        )


def from_args(
    cls: type[Config], args: argparse.Namespace, prefix: str = "", **overrides: Any
) -> Any:
    """The config from parsed flags (only those given) plus ``overrides``; validated."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {
        name[len(prefix) :]: value
        for name, value in vars(args).items()
        if name.startswith(prefix) and name[len(prefix) :] in names
    }
    return cls(**{**given, **overrides})


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` that shows a plain-argparse option's default, where it has one.

    For the experiment scripts, whose flags are not dataclass fields. argparse's own
    ``ArgumentDefaultsHelpFormatter`` also prints ``(default: None)`` and ``(default: [])``
    for options whose help already says what their absence means.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default in (None, "", [], argparse.SUPPRESS)
        if unset or isinstance(action.default, bool) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"
