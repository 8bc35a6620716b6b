"""The RetriKT student: a small encoder with a task head that retrieves teacher knowledge.

- :mod:`~retrikt.student.config`: ``StudentConfig`` / ``RetrievalConfig`` (``config.json``)
  and ``TrainConfig`` (how one is trained);
- :mod:`~retrikt.student.memory`: the store rows it retrieves from (per choice for COPA);
- :mod:`~retrikt.student.model`: :class:`RetriKT`, the model (predict, save, load);
- :mod:`~retrikt.student.evaluation`: official metrics of a student's predictions.

The mixing rule itself lives in :mod:`retrikt.retrieval`, the training loop in
:mod:`retrikt.training`.
"""

from typing import Any

#: Public names and their modules, imported on first use so that ``retrikt.student.config``
#: stays light (the command line reads its flags from it without loading torch).
_EXPORTS = {
    "RetrievalConfig": "config",
    "StudentConfig": "config",
    "TrainConfig": "config",
    "evaluate_model": "evaluation",
    "Neighbour": "model",
    "Prediction": "model",
    "RetriKT": "model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retrikt.student' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"retrikt.student.{_EXPORTS[name]}"), name)
