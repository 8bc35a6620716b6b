"""``retrikt export``: a trained student as ONNX (optionally int8) for fast CPU serving."""

from __future__ import annotations

import argparse
import logging

from retrikt.config import add_arguments, from_args
from retrikt.student.config import ExportConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "export",
        help="export a trained student's encoder to ONNX (optionally int8) for serving",
        description=(
            "Write a copy of a trained student folder whose encoder runs in onnxruntime: "
            "model.onnx (the transformer and its pooling) and its tokenizer replace encoder/; "
            "config.json, the head and the store are copied unchanged. 'retrikt predict', "
            "'serve' and 'evaluate' take the exported folder as they take the original. "
            "The export is checked against PyTorch before it is written (float32: the same "
            "vectors within 1e-4). --quantize int8 stores int8 weights (about 4x smaller, "
            "about 2x faster on CPU); measure its score with 'retrikt evaluate'."
        ),
    )
    add_arguments(sub, ExportConfig, required=("model", "out"))
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = from_args(ExportConfig, args)
    from retrikt.student.onnx import export_student
    from retrikt.student_folder import load_student

    for name in ("onnx_ir", "onnxscript"):  # a line per folded constant or rewrite
        logging.getLogger(name).setLevel(logging.WARNING)
    model = load_student(config.model)
    export_student(model, config.out, config.quantize, source=config.model)
    return 0
