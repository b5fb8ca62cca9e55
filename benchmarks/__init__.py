"""
The benchmark runners of sb3-trpo-ext, the code that times and trains: one package, one entry point
(``python -m benchmarks TOOL``, see :mod:`benchmarks.__main__`). The runners also run as files,
``python benchmarks/NAME.py``, the form the recorded commands use. Their result files go under ``benchmarks/results/``
in the schema of :mod:`reporting.results_io`; the reports made from them are in :mod:`reporting`.
"""
