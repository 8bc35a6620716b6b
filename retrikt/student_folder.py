"""Loading a user's student folder where a command or the server takes it (``--model DIR``).

``RetriKT.from_pretrained`` hands on what transformers, safetensors and torch raise about a
damaged folder (``SafetensorError``, ``AttributeError``, ``ValueError``...). Users should
read one sentence naming the file instead, so this checks the three parts of the folder
first and turns whatever the libraries still raise into a ``ModelFileError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from retrikt.errors import ModelFileError, RetriktError

if TYPE_CHECKING:
    from retrikt.student import RetriKT

CONFIG_NAME, HEAD_NAME, ENCODER_DIR = "config.json", "head.safetensors", "encoder"


def load_student(directory: str | Path) -> RetriKT:
    """The student saved in ``directory``, or a ModelFileError naming the bad file and why."""
    from safetensors import SafetensorError

    from retrikt.student import RetriKT

    folder = Path(directory)
    if not folder.is_dir():
        raise ModelFileError(f"--model {folder}: no such folder (give a trained student folder)")
    _check_config(folder / CONFIG_NAME)
    _check_safetensors(folder / HEAD_NAME)
    encoder = folder / ENCODER_DIR
    if encoder.is_dir():
        if not (encoder / "config.json").is_file():
            raise ModelFileError(
                f"{encoder} holds no encoder (no config.json): the student folder is incomplete"
            )
        for weights in sorted(encoder.glob("*.safetensors")):
            _check_safetensors(weights)
    try:
        return RetriKT.from_pretrained(folder)
    except RetriktError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RuntimeError,
        RecursionError,
        SafetensorError,
    ) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"{folder} is not a loadable student folder ({type(err).__name__}: {reason[:300]})"
        ) from None


def _check_config(path: Path) -> None:
    if not path.is_file():
        return  # from_pretrained names the missing part
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:
        raise ModelFileError(f"{path} is nested too deeply to be a student config") from None
    if not isinstance(config, dict):
        raise ModelFileError(
            f"{path} must hold a JSON object (the student config), got {type(config).__name__}"
        )


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return  # from_pretrained names the missing part
    try:
        with safe_open(path, framework="pt") as head:
            head.keys()
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"{path} is not a readable safetensors file ({err})") from None
