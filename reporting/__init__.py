"""
The reports of sb3-trpo-ext's benchmarks: what turns the result files under ``benchmarks/results/`` into the tables,
figures and generated sections of the README and the docs. The runners that write those files are in ``benchmarks/``.

- :mod:`reporting.results_io`: the result files' schema (written by the runners, read here) and their provenance;
- :mod:`reporting.sections`: the README's and the docs' generated sections, between their markers;
- :mod:`reporting.intervals`: the interquartile mean, bootstrap intervals and verdicts of the tables;
- one module per report (``matrix_report``, ``defaults_report``, ``figure4``, ``vine_vs_single``, ``speed_report``,
  ``atari_report``, ``ray_report``), each run as ``python -m reporting TOOL`` (:mod:`reporting.__main__`).
"""
