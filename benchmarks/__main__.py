"""
One entry point for the benchmark runners: ``python -m benchmarks TOOL [options]`` (run in the repository root).

    python -m benchmarks                          # list the tools
    python -m benchmarks speed --n-envs 1         # = python benchmarks/speed.py --n-envs 1
    python -m benchmarks matrix --preset defaults --workers 2

Each tool is a module of this package with a ``main(argv)``, run as if started directly: ``python -m benchmarks speed
ARGS`` records the command ``python benchmarks/speed.py ARGS`` (its ``--help`` describes it). Every result file a tool
writes names its machine, date, commit, versions and command in one schema (``reporting/results_io.py``); the tables
and figures made from them: ``python -m reporting``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

if not __package__:  # run as a file, python benchmarks/__main__.py: import the packages from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting import tool_entry

TOOLS = {
    "speed": ("benchmarks.speed", "ours vs sb3-contrib env-steps/s on Hopper-v5 (and the vine's simulator steps/s)"),
    "speed-atari": ("benchmarks.speed_atari", "ours vs sb3-contrib on Breakout, with where an update's time goes"),
    "fisher-paths": ("benchmarks.fisher_paths", "the Fisher-vector product's paths timed against each other"),
    "matrix": ("benchmarks.matrix", "train the benchmark matrix's cells (zoo YAML or class defaults), one result file each"),
    "train-defaults": ("benchmarks.train_defaults", "one class-defaults run, as a user without the zoo writes it"),
    "ablation": ("benchmarks.ablation", "one engine change at a time against our YAML"),
    "demo-seeds": ("benchmarks.demo_seeds", "the demo's returns over seeds"),
    "maskable": ("benchmarks.maskable", "MaskableTRPO against MaskablePPO and unmasked TRPO on masked-action tasks"),
    "recurrent": (
        "benchmarks.recurrent",
        "RecurrentTRPO against RecurrentPPO and feed-forward TRPO where memory matters; speed",
    ),
    "ray-trunk": ("benchmarks.ray_trunk", "RayVecEnv vs SubprocVecEnv end to end (inside a network namespace)"),
    "ray-vine": ("benchmarks.ray_vine", "the vine's branches on a Ray pool vs the SubprocVecEnv workers"),
}
"""Tool name -> (its module, what it does)."""


def main(argv: Sequence[str]) -> int:
    """
    :param argv: ``TOOL [options]``; nothing, ``-h`` or ``--help`` lists the tools
    :return: the tool's exit status (0 for the list, 2 for an unknown tool)
    """
    return tool_entry.main(__doc__ or "", TOOLS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
