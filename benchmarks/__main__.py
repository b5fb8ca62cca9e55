"""
One entry point for the benchmark tools: ``python -m benchmarks TOOL [options]`` (run in the repository root).

    python -m benchmarks                          # list the tools
    python -m benchmarks speed --n-envs 1         # = python benchmarks/speed.py --n-envs 1
    python -m benchmarks matrix --preset defaults --workers 2
    python -m benchmarks defaults-report --readme

Each tool is one script of this folder, run as if started directly (its ``--help`` describes it); every result
file names its machine, date, commit and command (``benchmarks/results_io.py``).
"""

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

TOOLS = {
    "speed": ("speed.py", "ours vs sb3-contrib env-steps/s on Hopper-v5 (and the vine's simulator steps/s)"),
    "speed-atari": ("speed_atari.py", "ours vs sb3-contrib on Breakout, with where an update's time goes"),
    "speed-report": ("speed_report.py", "the speed tables of the docs from the speed result files"),
    "fisher-paths": ("fisher_paths.py", "the Fisher-vector product's paths timed against each other"),
    "matrix": ("matrix.py", "train the benchmark matrix's cells (zoo YAML or class defaults), one result file each"),
    "train-defaults": ("train_defaults.py", "one class-defaults run, as a user without the zoo writes it"),
    "report": ("report.py", "the matrix's tables (IQM and intervals) and learning curves"),
    "defaults-report": ("defaults_report.py", "the class-defaults table, ours vs sb3-contrib"),
    "ablation": ("ablation.py", "one engine change at a time against our YAML"),
    "figure4": ("figure4.py", "the paper's Figure 4 comparison from the matrix files"),
    "vine-vs-single": ("vine_vs_single.py", "the vine against single path per simulator step and per update"),
    "vine-study": ("vine_study.py", "the vine's gradient quality against a large-batch reference"),
    "demo-seeds": ("demo_seeds.py", "the demo's returns over seeds"),
    "ray-trunk": ("ray_trunk.py", "RayVecEnv vs SubprocVecEnv end to end (inside a network namespace)"),
    "ray-vine": ("ray_vine.py", "the vine's branches on a Ray pool vs the SubprocVecEnv workers"),
    "ray-report": ("ray_report.py", "the Ray page's measured numbers and scaling projection"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in TOOLS:
        known = [name for name, (script, _) in TOOLS.items() if os.path.exists(os.path.join(HERE, script))]
        print(__doc__)
        print("tools:")
        for name in known:
            print(f"  {name:16} {TOOLS[name][1]}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    script = os.path.join(HERE, TOOLS[argv[0]][0])
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
