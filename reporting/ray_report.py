"""
The Ray numbers of ``docs/guide/distributed.md``: what ``benchmarks/ray_trunk.py`` and ``benchmarks/ray_vine.py``
measured, and a scaling projection from these costs, between the page's ``<!-- ray:start -->`` and
``<!-- ray:end -->`` markers.

    python -m reporting ray-report          # reads benchmarks/results/ray_trunk.json and ray_vine.json

The projection is arithmetic on the measured per-step, per-round-trip and per-byte costs; its assumptions are written
out with the table (:data:`ASSUMPTIONS`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

if not __package__:  # run as a file, python reporting/ray_report.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, read_result
from reporting.sections import README, replace_readme_section

RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOCS_PAGE = os.path.join(ROOT, "docs", "guide", "distributed.md")
CORES = (16, 64, 256)
BATCH = 50_000
"""The paper's single-path batch on Hopper (simulator steps per update)."""
PAPER_VINE = dict(n_states=625, n_actions=4, rollout_length=100, trunks=16, trunk_length=1000)
ENVS_PER_ACTOR, CLONES_PER_ACTOR, CORES_PER_NODE = 8, 32, 16
BANDWIDTH = 125e6
"""Bytes/s between nodes: 1 Gbit/s."""
ASSUMPTIONS = f"""\
Assumptions of the projection (each number from the two result files above unless stated):

- one actor per core, {CORES_PER_NODE} cores per node, nodes linked at 1 Gbit/s; the driver (on the head node) is not
  counted among the cores; every core as fast as this benchmark machine's (a loaded 2-core VM: its per-step costs are
  high, so absolute times are pessimistic, ratios less so);
- single path: {ENVS_PER_ACTOR} envs per actor (as measured), {BATCH:,} steps per update; a vectorised step costs
  {ENVS_PER_ACTOR} env steps in each actor, plus the measured round-trip overhead of a 2-actor step, either unchanged
  with more actors (*parallel*: the actors' messages overlap) or growing as overhead x actors / 2 (*serial*: the
  driver handles the actors' messages one after another), plus the step's bytes over the head's link; the driver's
  own time per sample (policy forward, buffer, update), from TRPO's measured learn rate minus its round trips, comes
  on top;
- vine at the paper's Hopper settings (N {PAPER_VINE["n_states"]}, K {PAPER_VINE["n_actions"]}, m
  {PAPER_VINE["rollout_length"]}, {PAPER_VINE["trunks"]} x {PAPER_VINE["trunk_length"]}-step trunks): the trunks on
  a 2-actor RayVecEnv as measured (TRPO's learn rate on it, which includes the critic fit the vine shares), one
  round trip (a step's overhead) per snapshot, every branch running its full m steps (an upper bound: Hopper
  branches that fall end early), waves of {CLONES_PER_ACTOR} clones per actor at the measured cost per branch step
  inside an actor, the measured overhead and driver time per wave (the driver's scaled by the wave's size), the
  shared object (weights and the wave's snapshots) sent once to each other node, the per-actor parts scaled to m,
  and the policy step's measured cost per branch."""


def load(name: str) -> dict[str, Any]:
    """:return: the result file ``benchmarks/results/{name}.json`` (:func:`~reporting.results_io.read_result`)"""
    return read_result(os.path.join(RESULTS, f"{name}.json"))


def trunk_costs(trunk: dict[str, Any]) -> dict[str, float]:
    """:return: seconds per env step, per round trip, per sample on the driver; bytes per env step"""
    step = trunk["ray_step_random_actions"]
    n_envs, per_actor = trunk["setup"]["n_envs"], trunk["setup"]["envs_per_actor"]
    learn_rate = trunk["learn_env_steps_per_s"]["ray"]["median"]
    driver = (n_envs / learn_rate - 1e-3 * trunk["ray_step_during_learn_ms"]["round_trip"]) / n_envs
    return {
        "env_step": 1e-3 * step["actor_env_ms"] / per_actor,
        "overhead": 1e-3 * step["overhead_ms"],
        "driver_per_sample": max(driver, 0.0),
        "bytes_per_env_step": (step["bytes_sent_per_step"] + step["bytes_received_per_step"]) / n_envs,
        "learn_rate": learn_rate,
    }


def single_path(costs: dict[str, float], cores: int, serial: bool) -> tuple[float, float]:
    """:return: seconds per update and simulator steps/s for the single path on ``cores`` cores"""
    n_envs = ENVS_PER_ACTOR * cores
    overhead = costs["overhead"] * (cores / 2 if serial else 1.0)
    step = ENVS_PER_ACTOR * costs["env_step"] + overhead + n_envs * costs["bytes_per_env_step"] / BANDWIDTH
    seconds = math.ceil(BATCH / n_envs) * step + BATCH * costs["driver_per_sample"]
    return seconds, BATCH / seconds


def vine(costs: dict[str, float], vine_run: dict[str, Any], cores: int) -> dict[str, float]:
    """:return: the seconds of each part of one vine update at the paper's settings, and the steps/s"""
    wave, update, setup = vine_run["ray_wave"], vine_run["update"], vine_run["setup"]["vine"]
    p = PAPER_VINE
    trunk_steps = p["trunks"] * p["trunk_length"]
    n_branches, m = p["n_states"] * p["n_actions"], p["rollout_length"]
    nodes = math.ceil(cores / CORES_PER_NODE)
    measured_m = setup["rollout_length"]
    part_per_branch = wave["bytes_parts_per_wave"] / wave["branches_per_wave"] * (m - 1) / (measured_m - 1)  # noise
    per_wave, branches_s = CLONES_PER_ACTOR * cores, 0.0
    for first in range(0, n_branches, per_wave):
        size = min(per_wave, n_branches - first)
        shared = wave["bytes_policy_per_wave"] + size / p["n_actions"] * wave["bytes_per_snapshot"]
        transfer = ((nodes - 1) * shared + size * part_per_branch) / BANDWIDTH
        driver = wave["driver_ms_per_wave"] * 1e-3 * size / wave["branches_per_wave"]
        branches_s += math.ceil(size / cores) * m * wave["actor_ms_per_branch_step"] * 1e-3
        branches_s += wave["overhead_ms"] * 1e-3 + driver + transfer
    parts = {
        "trunk_s": trunk_steps / costs["learn_rate"],
        "snapshots_s": p["n_states"] * costs["overhead"],
        "branches_s": branches_s,
        "policy_step_s": n_branches * update["policy_step_s_per_branch"],
    }
    parts["total_s"] = sum(parts.values())
    parts["steps_per_s"] = (trunk_steps + n_branches * m) / parts["total_s"]
    return parts


def measured_table(trunk: dict[str, Any], vine_run: dict[str, Any]) -> str:
    t, v, w = trunk["learn_env_steps_per_s"], vine_run["branch_steps_per_s"], vine_run["ray_wave"]
    step = trunk["ray_step_random_actions"]
    rows = [
        "| measurement | Ray | SubprocVecEnv | Ray / Subproc |",
        "|---|---|---|---|",
        f"| TRPO `learn`, Hopper-v5, 16 envs (2 actors x 8): env steps/s | {t['ray']['median']:,.0f} | "
        f"{t['subproc']['median']:,.0f} (16 processes) | {trunk['ratio_ray_over_subproc']:.2f} |",
        f"| VineTRPO branch phase, Hopper-v5 (N 64, K 4, m 20): simulator steps/s | {v['ray']['median']:,.0f} | "
        f"{v['subproc']['median']:,.0f} (2 workers) | {vine_run['ratio_ray_over_subproc']:.2f} |",
        "",
        f"Q-values bit-identical to the SubprocVecEnv run: **{vine_run['q_values_bit_identical']}** "
        f"({vine_run['q_value_iterations_compared']} iterations compared).",
        "",
        "| cost (Ray) | value |",
        "|---|---|",
        f"| one vectorised step of 2 actors x 8 envs: round trip / in the actors / overhead | "
        f"{step['round_trip_ms']:.1f} / {step['actor_env_ms']:.1f} / {step['overhead_ms']:.1f} ms |",
        f"| bytes per vectorised step (16 envs): actions sent / results received | "
        f"{step['bytes_sent_per_step']:,.0f} / {step['bytes_received_per_step']:,.0f} |",
        f"| one wave of {w['branches_per_wave']} branches (2 actors x 32): wall / slowest actor / overhead / driver | "
        f"{w['wave_ms']:.0f} / {w['slowest_actor_ms']:.0f} / {w['overhead_ms']:.1f} / {w['driver_ms_per_wave']:.1f} ms |",
        f"| per branch step inside an actor (policy forward included) | {w['actor_ms_per_branch_step']:.3f} ms |",
        f"| bytes per wave: shared object (of which weights) / per-actor parts / replies | "
        f"{w['bytes_shared_per_wave']:,.0f} ({w['bytes_policy_per_wave']:,.0f}) / {w['bytes_parts_per_wave']:,.0f} / "
        f"{w['bytes_replies_per_wave']:,.0f} |",
    ]
    return "\n".join(rows)


def projection_table(trunk: dict[str, Any], vine_run: dict[str, Any]) -> str:
    costs = trunk_costs(trunk)
    rows = [
        "| cores | single path, s/update (parallel / serial) | single path, steps/s (parallel / serial) | "
        "vine, s/update (trunk + snapshots + branches + policy step) | vine, steps/s |",
        "|---|---|---|---|---|",
    ]
    for cores in CORES:
        (fast_s, fast_rate), (slow_s, slow_rate) = single_path(costs, cores, False), single_path(costs, cores, True)
        v = vine(costs, vine_run, cores)
        rows.append(
            f"| {cores} | {fast_s:.1f} / {slow_s:.1f} | {fast_rate:,.0f} / {slow_rate:,.0f} | {v['total_s']:.1f} "
            f"({v['trunk_s']:.1f} + {v['snapshots_s']:.1f} + {v['branches_s']:.1f} + {v['policy_step_s']:.1f}) | "
            f"{v['steps_per_s']:,.0f} |"
        )
    return "\n".join(rows)


def section(trunk: dict[str, Any], vine_run: dict[str, Any]) -> str:
    """
    :param trunk: the ``ray_trunk.py`` result
    :param vine_run: the ``ray_vine.py`` result
    :return: the markdown of the page's section
    """
    trunk_data, vine_data = trunk["data"], vine_run["data"]
    return "\n\n".join(
        [
            f"Measured on {vine_run['machine']} (load average about {trunk_data['load_average_before_after'][0]:.0f} "
            f"during the trunk run, {vine_data['load_average_before_after'][0]:.0f} during the vine run: other jobs "
            f"shared the cores), {vine_run['date'][:10]}, Ray {vine_run['versions']['ray']}, one local Ray instance; "
            f"commands: `{trunk['command']}` and `{vine_run['command']}` (results in `benchmarks/results/ray_trunk.json` "
            "and `benchmarks/results/ray_vine.json`).",
            measured_table(trunk_data, vine_data),
            "**Projection** to a cluster (Hopper-v5: single path at the paper's 50K-step batch; vine at the paper's "
            "settings, 16K trunk + 250K branch steps per update):",
            projection_table(trunk_data, vine_data),
            ASSUMPTIONS,
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    text = section(load("ray_trunk"), load("ray_vine"))
    replace_readme_section(text, "ray", readme=README, docs=DOCS_PAGE)
    print(text)


if __name__ == "__main__":
    main()
