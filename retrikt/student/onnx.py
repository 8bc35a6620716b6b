"""The student's encoder exported to ONNX: written by ``retrikt export``, run by onnxruntime.

An exported folder is still a student folder: ``config.json``, ``head.safetensors`` and
``store/`` are copied unchanged, and the PyTorch ``encoder/`` is replaced by ``model.onnx``
(the transformer and its mean pooling, one graph: token ids in, the pooled vector out) and
``tokenizer/``. ``RetriKT.from_pretrained`` loads either kind; in an exported one
:class:`OnnxEncoder` stands where sentence-transformers' ``Transformer`` and ``Pooling``
stand, so the head, the store search and the mixing rule stay the one implementation of
:mod:`retrikt.student.model` and only the encoder forward differs.

The head stays in torch: it is one (hidden x labels) matrix, microseconds at any batch,
and kept in float32 it adds no quantisation error of its own. Export uses torch's own
exporter (``torch.onnx.export``, the ``torch.export``-based one); ``--quantize int8`` is
onnxruntime's dynamic quantisation (int8 weights of every MatMul with one scale per output
channel, activations quantised as they come), which needs no calibration data. Each export is
checked before it is published: the graph must reproduce the PyTorch vectors on samples.

Example::

    export_student(RetriKT.from_pretrained("runs/cb"), "runs/cb-int8", quantize="int8")
    RetriKT.from_pretrained("runs/cb-int8").predict([["It rained.", "The ground is wet."]])
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from retrikt.errors import ModelFileError, RetriktError
from retrikt.student.config import CONFIG_NAME, HEAD_NAME, STORE_DIR

if TYPE_CHECKING:
    from retrikt.student.model import RetriKT

logger = logging.getLogger(__name__)

ONNX_NAME, TOKENIZER_DIR = "model.onnx", "tokenizer"
#: Graph inputs, in the order the exporter traces them; a model without segment ids
#: (``token_type_ids``) is exported without that input.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
QUANTIZATIONS = ("int8",)
#: Largest difference allowed between exported float32 vectors and PyTorch's.
FP32_TOLERANCE = 1e-4
#: Below this cosine between int8 and PyTorch vectors, the quantised graph is refused.
INT8_MIN_COSINE = 0.98
_CHECK_TEXTS = (
    ("A man is playing a guitar on the stage.", "Someone performs music."),
    ("It rained all day.", None),
    ("The committee did not approve the budget, which surprised nobody.", "No one expected it."),
)


class OnnxEncoder(nn.Module):
    """An exported encoder behind the interface ``RetriKT`` uses of sentence-transformers'
    ``Transformer`` (``preprocess``, ``tokenizer``, ``max_seq_length``, forward to a
    ``sentence_embedding``); its pooling is inside the graph. Inputs run one at a time
    (see :meth:`forward`).

    onnxruntime gets as many threads as torch has (``torch.set_num_threads``,
    ``OMP_NUM_THREADS``), so one setting governs both kinds of student.
    """

    def __init__(self, directory: Path):
        super().__init__()
        import onnxruntime as ort
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        path = directory / ONNX_NAME
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's errors have no common base class below this
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise ModelFileError(f"{path} is not a loadable ONNX model ({reason})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR)
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    @property
    def max_seq_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tokenizer.model_max_length = value

    def get_embedding_dimension(self) -> int:
        return self.dim

    def preprocess(self, inputs: Sequence[str | tuple[str, str]]) -> dict[str, Any]:
        """Token ids as sentence-transformers makes them: pairs as tokenizer pairs, padded to
        the longest, the longest text of a pair truncated first."""
        texts = [item if isinstance(item, str) else item[0] for item in inputs]
        pairs = [item[1] for item in inputs if not isinstance(item, str)]
        return self.tokenizer(
            texts,
            pairs or None,
            padding=True,
            truncation="longest_first",
            return_tensors="np",
        )

    def forward(self, features: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The pooled vector of each input, run one input at a time without its padding.

        On CPU a padded batch costs more than its inputs one by one (one thread, 32 CB pairs:
        int8 400-525 ms as a batch, 170-286 ms one by one; float32 710-970 vs 440-660 ms), and
        int8 activations are quantised with one scale per call: run together, an input's
        vector would depend on the inputs beside it (by up to 0.1 here), so a served answer
        would change with the requests it was batched with.
        """
        mask = np.asarray(features["attention_mask"]).astype(bool)
        columns = {name: np.asarray(features[name], dtype=np.int64) for name in self.input_names}
        pooled = [
            self.session.run(
                [OUTPUT], {name: ids[row, keep][None] for name, ids in columns.items()}
            )[0]
            for row, keep in enumerate(mask)
        ]
        if not pooled:
            return {"sentence_embedding": torch.zeros(0, self.dim)}
        return {"sentence_embedding": torch.from_numpy(np.concatenate(pooled))}


def is_exported(directory: str | Path) -> bool:
    """True for a folder written by ``retrikt export`` (it holds ``model.onnx``)."""
    return (Path(directory) / ONNX_NAME).is_file()


def load_encoder(directory: Path) -> tuple[OnnxEncoder, nn.Module]:
    """The exported encoder of ``directory`` and its (empty) pooling, as ``RetriKT`` takes them."""
    if not (directory / TOKENIZER_DIR).is_dir():
        raise ModelFileError(f"{directory} holds {ONNX_NAME} but no {TOKENIZER_DIR}/ folder")
    return OnnxEncoder(directory), nn.Identity()


class _Embedder(nn.Module):
    """What is exported: token ids to the student's mean-pooled vector."""

    def __init__(self, model: RetriKT):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            features["token_type_ids"] = token_type_ids
        return self.model.embed(features)


def export_student(
    model: RetriKT, out: str | Path, quantize: str | None = None, source: str | Path | None = None
) -> Path:
    """Write ``model`` (a PyTorch ``RetriKT``) as an exported student folder at ``out``.

    ``source`` is the folder it was loaded from, whose config, head and store are copied
    byte for byte (a model never saved is saved first). The folder is written beside
    ``out`` and renamed into place once the export has passed its check.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise RetriktError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize}")
    if isinstance(model.encoder, OnnxEncoder):
        raise RetriktError("this student is already exported: export its PyTorch folder instead")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RetriktError(f"--out {out} already exists and is not empty: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as staging:
        stage = Path(staging) / "student"
        if source is None:
            source = model.save_pretrained(Path(staging) / "source")
        _copy_student_files(Path(source), stage)
        model.encoder.tokenizer.save_pretrained(stage / TOKENIZER_DIR)
        fp32 = Path(staging) / "fp32.onnx"
        names = _export_graph(model, fp32)
        target = stage / ONNX_NAME
        if quantize == "int8":
            _quantize_int8(fp32, target)
        else:
            shutil.move(fp32, target)
        _check(model, stage, names, quantize)
        if out.exists():
            out.rmdir()
        stage.rename(out)
    logger.info("wrote %s (%s, %.1f MB)", out, quantize or "float32",
                (out / ONNX_NAME).stat().st_size / 1e6)  # fmt: skip
    return out


def _copy_student_files(source: Path, stage: Path) -> None:
    """Config, head and store, unchanged: the exported folder is the same student."""
    stage.mkdir()
    for name in (CONFIG_NAME, HEAD_NAME):
        shutil.copy2(source / name, stage / name)
    if (source / STORE_DIR).is_dir():
        shutil.copytree(source / STORE_DIR, stage / STORE_DIR,
                        ignore=shutil.ignore_patterns(".lock"))  # fmt: skip


def _export_graph(model: RetriKT, path: Path) -> list[str]:
    """The encoder and its pooling as one ONNX graph, batch and length dynamic."""
    features = model.tokenize_inputs(_CHECK_TEXTS)
    names = [name for name in INPUTS if name in features]
    args = tuple(features[name] for name in names)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    with warnings.catch_warnings():  # the exporter's notes on its own internals
        warnings.filterwarnings("ignore", ".*The axis name", UserWarning)
        warnings.filterwarnings("ignore", ".*treespec", FutureWarning)
        torch.onnx.export(
            _Embedder(model).eval(),
            args,
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_shapes={name: {0: batch, 1: length} for name in names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return names


def _quantize_int8(fp32: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantisation, one scale per output channel.

    Per-channel scales keep MiniLM's vectors at cosine 0.994 to float32 on RTE pairs (one
    scale per matrix: 0.962). onnxruntime logs a line per tensor on the root logger; they
    are held back while it runs (among them advice to pre-process the graph, which changed
    nothing here).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(fp32, target, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _check(model: RetriKT, stage: Path, names: Sequence[str], quantize: str | None) -> None:
    """The exported graph must give PyTorch's vectors (float32) or close ones (int8)."""
    features = model.tokenize_inputs(_CHECK_TEXTS)
    with torch.inference_mode():
        expected = model.embed(features).numpy()
    encoder = OnnxEncoder(stage)
    got = encoder({name: features[name].numpy() for name in names})["sentence_embedding"]
    got = got.numpy()
    if quantize is None:
        gap = float(np.abs(got - expected).max())
        if gap > FP32_TOLERANCE:
            raise RetriktError(f"the exported encoder differs from PyTorch by {gap:.2e}")
        logger.info("exported encoder matches PyTorch within %.1e", gap)
        return
    cosine = (got * expected).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    if cosine.min() < INT8_MIN_COSINE:
        raise RetriktError(f"the int8 encoder is too far from PyTorch (cosine {cosine.min():.3f})")
    logger.info("int8 encoder vectors: cosine %.4f or more to PyTorch's", cosine.min())
