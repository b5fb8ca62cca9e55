"""
The `make demo` result over several seeds: what a normal run of examples/demo_hopper.py looks like on this machine.

A single seed's learning curve changes with floating-point details across machines, so one number is no reference.
This runs the demo itself (its own settings, only --seed and --output change) once per seed, one run at a time with
one torch thread, and keeps each seed's result in benchmarks/results/demo_seeds/seed_S.json as soon as it finishes
(seeds whose file exists are skipped, so an interrupted run resumes). It then writes summary.json there: mean, min,
max and std over seeds of the reloaded model's 10-episode return and of the last training-time evaluation. Both are
result files of reporting/results_io.py (machine, date, commit, versions, command). The demo reads summary.json to
print its own result next to the range.

    python benchmarks/demo_seeds.py                 # seeds 0..4, the demo's default 300K steps
    python benchmarks/demo_seeds.py --seeds 0 1 2   # other seeds
    python benchmarks/demo_seeds.py --report        # summary.json as a markdown paragraph and table for the README
    python benchmarks/demo_seeds.py --readme        # the same, written into README.md between its markers
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

if not __package__:  # run as a file, python benchmarks/demo_seeds.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, read_result, write_result
from reporting.sections import replace_readme_section

DEMO = os.path.join(ROOT, "examples", "demo_hopper.py")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "demo_seeds")
OUTPUT = os.path.join(ROOT, "benchmarks", "output")


def package_hash() -> str:
    """A short hash of the package's Python sources, to tell whether two seeds ran the same code."""
    digest = hashlib.sha256()
    package = os.path.join(ROOT, "sb3_trpo_ext")
    for folder, dirs, files in sorted(os.walk(package)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, package).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:12]


def run_seed(seed: int, timesteps: int | None) -> dict[str, Any]:
    """Runs the demo for one seed in its own process and returns its result.json plus the process's wall time."""
    out_dir = os.path.join(OUTPUT, f"demo_seed_{seed}")
    cmd = [sys.executable, DEMO, "--seed", str(seed), "--output", out_dir]
    if timesteps is not None:
        cmd += ["--timesteps", str(timesteps)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the demo also sets one torch thread
    print(f"[seed {seed}] {shlex.join(cmd)}", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    code_before = package_hash()
    start = time.perf_counter()
    with open(os.path.join(out_dir, "log.txt"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[seed {seed}] {line}", end="", flush=True)
            log.write(line)
        if proc.wait() != 0:
            raise RuntimeError(f"seed {seed}: the demo exited with {proc.returncode}; see {log.name}")
    with open(os.path.join(out_dir, "result.json")) as f:
        result = json.load(f)  # the demo's own output, not a result file of the benchmarks
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["package_hash"] = code_before
    if package_hash() != code_before:
        result["package_changed_during_run"] = True
        print(f"[seed {seed}] warning: sb3_trpo_ext's sources changed while this seed ran", flush=True)
    return result


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,  # sample std over seeds
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """
    :param results: the seeds' results (their data)
    :return: the summary's data: the statistics over seeds, and each seed's result
    """
    settings = {(r["env"], r["requested_timesteps"]) for r in results}
    if len(settings) != 1:
        raise ValueError(f"seed results were measured with different settings: {sorted(settings)}")
    ((env_id, timesteps),) = settings
    return {
        "env": env_id,
        "timesteps": timesteps,
        "n_seeds": len(results),
        "seeds": [r["seed"] for r in results],
        "loaded_return": stats([r["loaded_return"] for r in results]),
        "final_eval_return": stats([r["final_eval_return"] for r in results]),
        "train_seconds": stats([r["train_seconds"] for r in results]),
        "wall_seconds": stats([r["wall_seconds"] for r in results]),
        "notes": (
            "loaded_return: the saved-and-reloaded model, 10 deterministic episodes (the demo's last line); "
            "final_eval_return: the last evaluation during training, 5 deterministic episodes; std over seeds with ddof=1"
        ),
        "package_hashes": sorted({r.get("package_hash", "unknown") for r in results}),  # more than one: mixed code
        "torch_threads": 1,
        "per_seed": results,
    }


def machine_text(machine: str | dict[str, Any]) -> str:
    """:return: the machine a summary names (the summaries before the result schema describe it in a dict)"""
    return machine["description"] if isinstance(machine, dict) else machine


def report(result: dict[str, Any]) -> str:
    """summary.json as a markdown paragraph and table, for the README."""
    summary = result["data"]
    lr, fe = summary["loaded_return"], summary["final_eval_return"]
    seeds = summary["seeds"]
    consecutive = len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1))
    seed_text = f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})" if consecutive else f"seeds {', '.join(map(str, seeds))}"
    if len(seeds) == 1:
        seed_text = f"seed {seeds[0]} only"
    paragraph = (
        f"`make demo` ({summary['env']}, {summary['timesteps']:,} steps) over {seed_text}, measured with the demo's own "
        f"settings on {machine_text(result['machine'])} (one torch thread, {result['date'][:10]}): the reloaded "
        f"model's mean return over 10 episodes is {lr['mean']:,.0f} on average, range {lr['min']:,.0f}-{lr['max']:,.0f} "
        f"(std {lr['std']:,.0f}); the last evaluation during training averages {fe['mean']:,.0f}, range "
        f"{fe['min']:,.0f}-{fe['max']:,.0f}. Training takes about {summary['train_seconds']['mean']:,.0f} s per seed. "
        "One seed's curve changes with floating-point details (machine, library and code versions), so the demo "
        "prints its result next to this range; a result below it is either a seed-to-seed outlier or a sign that "
        "something is broken. Measured by `python benchmarks/demo_seeds.py`, results in "
        "[`benchmarks/results/demo_seeds/`](benchmarks/results/demo_seeds/)."
    )
    lines = [
        textwrap.fill(paragraph, width=117, break_long_words=False, break_on_hyphens=False),
        "",
        "| seed | reloaded model, 10 episodes | last training eval, 5 episodes | training s |",
        "|---:|---:|---:|---:|",
    ]
    for r in summary["per_seed"]:
        lines.append(
            f"| {r['seed']} | {r['loaded_return']:,.0f} | {r['final_eval_return']:,.0f} | {r['train_seconds']:,.0f} |"
        )
    lines.append(
        f"| mean (min-max) | {lr['mean']:,.0f} ({lr['min']:,.0f}-{lr['max']:,.0f}) | "
        f"{fe['mean']:,.0f} ({fe['min']:,.0f}-{fe['max']:,.0f}) | {summary['train_seconds']['mean']:,.0f} |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--timesteps", type=int, default=None, help="override the demo's default (for smoke tests)")
    parser.add_argument("--results-dir", default=RESULTS)
    parser.add_argument("--report", action="store_true", help="print summary.json as markdown and exit")
    parser.add_argument("--readme", action="store_true", help="write that markdown into README.md (between markers)")
    args = parser.parse_args(argv)
    summary_path = os.path.join(args.results_dir, "summary.json")
    if args.report or args.readme:
        text = report(read_result(summary_path))
        if args.readme:  # README.md and the docs' results page, where each has the demo-seeds markers
            replace_readme_section(text.strip(), "demo-seeds")
        else:
            print(text)
        return
    results = [seed_result(seed, args.timesteps, args.results_dir) for seed in args.seeds]
    summary = write_result(summary_path, summarize(results))
    print(f"Wrote {summary_path}\n")
    print(report(summary))


def seed_result(seed: int, timesteps: int | None, results_dir: str) -> dict[str, Any]:
    """
    :return: one seed's result data: from its file when it exists (measured at ``timesteps``), else from a new run
        (written to its file)
    """
    path = os.path.join(results_dir, f"seed_{seed}.json")
    if os.path.exists(path):
        result = read_result(path)["data"]
        if timesteps is not None and result["requested_timesteps"] != timesteps:
            raise SystemExit(f"{path} was measured at {result['requested_timesteps']} steps; remove it first")
        print(f"[seed {seed}] done before: {path}", flush=True)
    else:
        result = run_seed(seed, timesteps)
        write_result(path, result, git_paths=("sb3_trpo_ext",))
    print(
        f"[seed {seed}] reloaded model {result['loaded_return']:.1f}, last eval {result['final_eval_return']:.1f}, "
        f"train {result['train_seconds']:.0f} s, wall {result['wall_seconds']:.0f} s",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
