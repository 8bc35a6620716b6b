"""RetriKT: move a large language model's task knowledge into a tiny encoder by retrieval."""

__version__ = "0.1.0"
