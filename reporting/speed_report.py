"""
Turn the speed benchmark's result files into the README's Speed tables (between its ``speed`` markers).

    python -m reporting speed-report            # print the markdown
    python -m reporting speed-report --readme   # write it between the speed markers (docs/misc/results.md)

Reads ``benchmarks/results/speed.json`` (the current code, ``benchmarks/speed.py``) and, when present,
``benchmarks/results/speed_0.1.0.json`` (the same script run on release 0.1.0's package in the same sitting) and
``benchmarks/results/speed_vine.json`` (``speed.py --only-vine --output ...``) for the vine table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

if not __package__:  # run as a file, python reporting/speed_report.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, read_result
from reporting.sections import replace_readme_section

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def load(name: str) -> dict[str, Any] | None:
    """:return: the result file ``benchmarks/results/{name}`` (:func:`~reporting.results_io.read_result`), if present"""
    path = os.path.join(RESULTS, name)
    return read_result(path) if os.path.exists(path) else None


def library_rows(result: dict[str, Any]) -> list[str]:
    """:return: one row per ``n_envs`` of a ``speed.py`` result: both libraries' steps/s and train() times, the ratios"""
    results = result["data"]
    rows = []
    by_envs: dict[int, dict[str, dict]] = {}
    for row in results["rows"]:
        by_envs.setdefault(row["n_envs"], {})[row["lib"]] = row
    for n_envs, libs in sorted(by_envs.items()):
        ours, peer = libs["sb3-trpo-ext"], libs["sb3-contrib"]
        rows.append(
            f"| {results['label']} | {n_envs} | {peer['steps_per_s']:,.0f} | {ours['steps_per_s']:,.0f} | "
            f"**{ours['steps_per_s'] / peer['steps_per_s']:.2f}x** | {peer['train_ms']:.0f} ms | {ours['train_ms']:.0f} ms | "
            f"**{ours['train_ms'] / peer['train_ms']:.2f}x** |"
        )
    return rows


def report() -> str:
    """:return: the markdown of the speed section"""
    current = load("speed.json")
    if current is None:
        raise SystemExit("no benchmarks/results/speed.json: run benchmarks/speed.py first")
    lines = [
        f"Measured {current['date'][:10]} on {current['machine']}, torch {current['versions']['torch']}, one thread, "
        f"{current['data']['rounds']} x {current['data']['steps']:,} timed steps per model (`{current['command']}`):",
        "",
        "| code | n_envs | sb3-contrib steps/s | ours steps/s | end-to-end ratio | sb3-contrib train() | ours train() "
        "| train() ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in (load("speed_0.1.0.json"), current):
        if result is not None:
            lines += library_rows(result)
    vine_run = load("speed_vine.json") or current  # a separate `--only-vine` run, when there is one
    if vine_run["data"].get("vine"):
        lines += [
            "",
            "VineTRPO vs single-path TRPO, simulator steps per second (trunk plus branches), N=64, K=4, m=50 "
            f"(`{vine_run['command']}`, {vine_run['date'][:10]}):",
            "",
        ]
        lines += ["| n_envs | TRPO | VineTRPO | ratio |", "|---|---|---|---|"]
        for row in vine_run["data"]["vine"]:
            ratio = row["vine_steps_per_s"] / row["trpo_steps_per_s"]
            lines.append(
                f"| {row['n_envs']} | {row['trpo_steps_per_s']:,.0f} | {row['vine_steps_per_s']:,.0f} | **{ratio:.2f}x** |"
            )
    atari = load("speed_atari.json")
    if atari is not None:
        lines += ["", atari_table(atari)]
    return "\n".join(lines)


def atari_table(result: dict[str, Any]) -> str:
    """The Breakout row (``benchmarks/speed_atari.py``) and where each library's time goes per update."""
    results = result["data"]
    rows = {row["lib"]: row for row in results["rows"]}
    ours, peer = rows["sb3-trpo-ext"], rows["sb3-contrib"]
    parts = results["seconds_per_update"]
    lines = [
        f"Atari, BreakoutNoFrameskip-v4 (`{result['command'].strip()}`, {result['date'][:10]}, {results['rounds']} x "
        f"{results['steps']:,} timed steps per model; settings in the script's docstring):",
        "",
        "| sb3-contrib steps/s | ours steps/s | end-to-end ratio | sb3-contrib train() | ours train() | train() ratio |",
        "|---|---|---|---|---|---|",
        f"| {peer['steps_per_s']:.1f} | {ours['steps_per_s']:.1f} | **{ours['steps_per_s'] / peer['steps_per_s']:.2f}x** | "
        f"{peer['train_s']:.1f} s | {ours['train_s']:.1f} s | **{ours['train_s'] / peer['train_s']:.2f}x** |",
        "",
        "| seconds per update (1,024 steps) | sb3-contrib | ours |",
        "|---|---|---|",
    ]
    names = [
        ("rollout", "rollout"),
        ("fisher_setup", "Fisher product setup"),
        ("fisher_products", "Fisher-vector products"),
        ("critic", "critic fit"),
        ("train_rest", "rest of train()"),
        ("total", "total"),
    ]
    for key, label in names:
        cells = [f"{parts[lib][key]:.2f}" if key in parts[lib] else "-" for lib in ("sb3-contrib", "sb3-trpo-ext")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="write the tables into README.md between the markers")
    args = parser.parse_args(argv)
    text = report()
    if not args.readme:
        print(text)
        return
    replace_readme_section(text, "speed")  # README.md and the docs' results page, where each has the markers


if __name__ == "__main__":
    main()
