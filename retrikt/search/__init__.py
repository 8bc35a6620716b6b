"""``retrikt search-student``: the student's architecture, searched under a latency budget.

After KD-NAS (Trivedi et al., 2023, arXiv 2303.09639): a controller proposes architectures;
each is rewarded for its distillation loss on a small proxy set and penalised for the CPU
latency measured on this machine; the best candidates are distilled with multi-layer
hidden-state distillation and the winner is distilled on the full data.

- :mod:`~retrikt.search.config`: ``SearchConfig`` (the command's flags);
- :mod:`~retrikt.search.latency`: p50 latency at batch 1 of an architecture, cached;
- :mod:`~retrikt.search.search`: the Optuna study, the reward, finalists and the winner;
- :mod:`~retrikt.search.report`: the Pareto front (chart and table) and recommendations.

Candidates are cut out of a pretrained parent by :mod:`retrikt.student.slicing`; the
hidden-state loss is :mod:`retrikt.student.hidden`, added to the one training loop
(:func:`retrikt.training.train`).
"""
