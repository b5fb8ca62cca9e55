"""
One entry point for the benchmark tools: ``python -m benchmarks TOOL [options]`` (run in the repository root).

    python -m benchmarks                          # list the tools
    python -m benchmarks speed --n-envs 1         # = python benchmarks/speed.py --n-envs 1
    python -m benchmarks matrix --preset defaults --workers 2
    python -m benchmarks defaults-report --readme

Each tool is a module of this package (or a subpackage, by its ``__main__``) with a ``main(argv)``, run as if started
directly: ``python -m benchmarks speed ARGS`` records the command ``python benchmarks/speed.py ARGS`` (its ``--help``
describes it). Every result file a tool writes names its machine, date, commit, versions and command in one schema
(``benchmarks/results_io.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence

TOOLS = {
    "speed": ("speed", "ours vs sb3-contrib env-steps/s on Hopper-v5 (and the vine's simulator steps/s)"),
    "speed-atari": ("speed_atari", "ours vs sb3-contrib on Breakout, with where an update's time goes"),
    "atari-report": ("atari_report", "the Atari scores, curves and before/after table from the Atari result files"),
    "speed-report": ("speed_report", "the speed tables of the docs from the speed result files"),
    "fisher-paths": ("fisher_paths", "the Fisher-vector product's paths timed against each other"),
    "matrix": ("matrix", "train the benchmark matrix's cells (zoo YAML or class defaults), one result file each"),
    "train-defaults": ("train_defaults", "one class-defaults run, as a user without the zoo writes it"),
    "report": ("report", "the matrix's tables (IQM and intervals) and learning curves"),
    "defaults-report": ("defaults_report", "the class-defaults table, ours vs sb3-contrib"),
    "ablation": ("ablation", "one engine change at a time against our YAML"),
    "figure4": ("figure4", "the paper's Figure 4 comparison from the matrix files"),
    "vine-vs-single": ("vine_vs_single", "the vine against single path per simulator step and per update"),
    "vine-study": ("vine_study", "the vine's gradient quality against a large-batch reference"),
    "demo-seeds": ("demo_seeds", "the demo's returns over seeds"),
    "maskable": ("maskable", "MaskableTRPO against MaskablePPO and unmasked TRPO on masked-action tasks"),
    "recurrent": ("recurrent", "RecurrentTRPO against RecurrentPPO and feed-forward TRPO where memory matters; speed"),
    "ray-trunk": ("ray_trunk", "RayVecEnv vs SubprocVecEnv end to end (inside a network namespace)"),
    "ray-vine": ("ray_vine", "the vine's branches on a Ray pool vs the SubprocVecEnv workers"),
    "ray-report": ("ray_report", "the Ray page's measured numbers and scaling projection"),
    "results-io": ("results_io", "copy the README's generated sections into the docs' results page (--docs)"),
}
"""Tool name -> (module of this package, what it does)."""


def available() -> list[str]:
    """:return: the tools whose module is present"""
    return [name for name, (module, _) in TOOLS.items() if importlib.util.find_spec(f"benchmarks.{module}") is not None]


def main(argv: Sequence[str]) -> int:
    """
    :param argv: ``TOOL [options]``; nothing, ``-h`` or ``--help`` lists the tools
    :return: the tool's exit status (0 for the list, 2 for an unknown tool)
    """
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in TOOLS:
        print(__doc__)
        print("tools:")
        for name in available():
            print(f"  {name:16} {TOOLS[name][1]}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    tool = importlib.import_module(f"benchmarks.{TOOLS[argv[0]][0]}")
    if not hasattr(tool, "main"):  # a subpackage: its __main__ module
        tool = importlib.import_module(f"{tool.__name__}.__main__")
    saved, sys.argv = sys.argv, [str(tool.__file__), *argv[1:]]  # as if started directly: its usage and recorded command
    try:
        status = tool.main(list(argv[1:]))
    finally:
        sys.argv = saved
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
