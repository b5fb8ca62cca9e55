"""
The benchmark tools of sb3-trpo-ext: one package, one entry point (``python -m benchmarks TOOL``, see
:mod:`benchmarks.__main__`), one result schema (:mod:`benchmarks.results_io`). The tools also run as files,
``python benchmarks/NAME.py``, the form the recorded commands use.
"""
