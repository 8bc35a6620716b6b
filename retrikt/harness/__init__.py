"""The evaluation harness: RetriKT against its baselines, on many tasks and seeds, resumable.

``retrikt evaluate --tasks cb,rte --methods student-ft,retrikt --seeds 0,1,2 --scale demo
--name NAME`` (:mod:`retrikt.cli.evaluate`) runs every method on every task's validation split
with the official metrics and writes ``experiments/results/NAME.md``, ``.json`` and ``.png``
(mean ± sample std over seeds, parameter count, training time, CPU latency at batch 1).

- :mod:`~retrikt.harness.scales`: the scale presets and the run's config;
- :mod:`~retrikt.harness.artefacts`: per-task data and the artefacts built once per task;
- :mod:`~retrikt.harness.methods`: the methods compared (:data:`METHODS`);
- :mod:`~retrikt.harness.knn`: the kNN baseline's vote;
- :mod:`~retrikt.harness.running`: running and caching every (task, method, seed);
- :mod:`~retrikt.harness.report`: statistics, Markdown, JSON and the chart.
"""
