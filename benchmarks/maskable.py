"""
Action masking: MaskableTRPO against sb3-contrib's MaskablePPO and against our unmasked TRPO, on sb3-contrib's
masked-action test envs and on a scheduling task where most actions are invalid in most states.

Each (task, algorithm, seed) run trains one model in this process (one torch thread), evaluates it deterministically
every fifth of the budget (masked algorithms with the env's masks, the unmasked TRPO without) and keeps the result in
``benchmarks/results/maskable/TASK__ALGO__seedS.json`` (a result file of ``reporting/results_io.py``); runs whose file
exists are skipped, so an interrupted run resumes. ``--readme`` writes the table (:mod:`reporting.maskable_report`)
into the docs between the ``maskable`` markers.

    python benchmarks/maskable.py --seeds 0 1 2                 # every task and algorithm
    python benchmarks/maskable.py --tasks SlotScheduling --algos MaskableTRPO TRPO --seeds 0
    python benchmarks/maskable.py --readme                      # the table, into docs/misc/results.md and the page

:class:`~envs.slot_scheduling.SlotSchedulingEnv` is the task where masking changes the outcome (most actions invalid
in most states); importing this module registers it as ``SlotScheduling-v0`` (``--gym-packages benchmarks.maskable``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

if not __package__:  # run as a file, python benchmarks/maskable.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from envs.slot_scheduling import SlotSchedulingEnv  # registers SlotScheduling-v0 (for the zoo)
from reporting import maskable_report
from reporting.results_io import write_result
from reporting.sections import replace_docs_section, replace_readme_section

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "maskable")
DOCS_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "modules", "maskable.md")
N_EVALUATIONS = 5


def _invalid_action_env(kind: str) -> Callable[[], gym.Env]:
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete

    makers: dict[str, Callable[[], gym.Env]] = {
        "Discrete": lambda: InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55),
        "MultiDiscrete": lambda: InvalidActionEnvMultiDiscrete(dims=[10, 10], n_invalid_actions=14),
        "MultiBinary": lambda: InvalidActionEnvMultiBinary(dims=8, n_invalid_actions=6),
    }
    return makers[kind]


TASKS: dict[str, dict[str, Any]] = {
    "SlotScheduling": dict(make=SlotSchedulingEnv, budget=50_000, gamma=0.99, episodes=20,
                           shape="Discrete(25), ~22 masked"),
    "InvalidActionEnvDiscrete": dict(make=_invalid_action_env("Discrete"), budget=10_000, gamma=0.1, episodes=5,
                                     shape="Discrete(70), 55 masked per state"),
    "InvalidActionEnvMultiDiscrete": dict(make=_invalid_action_env("MultiDiscrete"), budget=10_000, gamma=0.1,
                                          episodes=5, shape="MultiDiscrete([10, 10]), 14 of 20 masked"),
    "InvalidActionEnvMultiBinary": dict(make=_invalid_action_env("MultiBinary"), budget=10_000, gamma=0.1, episodes=5,
                                        shape="MultiBinary(8), 6 of 16 masked"),
}  # fmt: skip
"""Task -> how to make its env, the budget, gamma (the identity envs: 0.1, as sb3-contrib's test), the evaluation
episodes (the identity envs' are 100 steps long, the scheduling task's 8) and its action space."""

ALGOS = ("MaskableTRPO", "MaskablePPO", "TRPO", "MaskableNaturalPG")
"""The table's columns; a run without ``--algos`` trains the first three (MaskableNaturalPG on request)."""
MASKED = {"MaskableTRPO", "MaskablePPO", "MaskableNaturalPG"}
N_STEPS = 512
"""Every algorithm collects 512 steps per update (its class defaults otherwise)."""


def algorithm_class(name: str) -> type:
    if name == "MaskablePPO":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    import sb3_trpo_ext

    return getattr(sb3_trpo_ext, name)


def evaluate(model: Any, env: gym.Env, masked: bool, episodes: int) -> float:
    """The mean return of ``episodes`` deterministic episodes (with the env's masks for a masked model)."""
    if masked:
        from sb3_contrib.common.maskable.evaluation import evaluate_policy as masked_evaluate

        mean, _ = masked_evaluate(model, env, n_eval_episodes=episodes, warn=False)
    else:
        from stable_baselines3.common.evaluation import evaluate_policy

        mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, warn=False)
    return float(mean)


def run(task: str, algo: str, seed: int) -> dict[str, Any]:
    """Train one model, evaluated every fifth of the budget; :return: the result's data."""
    import torch as th

    th.set_num_threads(1)
    spec = TASKS[task]
    env, eval_env = spec["make"](), spec["make"]()
    eval_env.reset(seed=10_000 + seed)
    kwargs: dict[str, Any] = dict(n_steps=N_STEPS, gamma=spec["gamma"], seed=seed)
    if algo != "MaskablePPO":
        kwargs["batch_size"] = 128
    model = algorithm_class(algo)("MlpPolicy", env, **kwargs)
    step = spec["budget"] // N_EVALUATIONS
    evaluations = [[0, evaluate(model, eval_env, algo in MASKED, spec["episodes"])]]
    for k in range(1, N_EVALUATIONS + 1):
        model.learn(step, reset_num_timesteps=False)
        evaluations.append([k * step, evaluate(model, eval_env, algo in MASKED, spec["episodes"])])
    returns = [value for _, value in evaluations[1:]]
    return dict(task=task, algo=algo, seed=seed, budget=spec["budget"], settings={k: v for k, v in kwargs.items()},
                evaluations=evaluations, final=returns[-1], auc=float(np.mean(returns)))  # fmt: skip


def result_path(task: str, algo: str, seed: int) -> str:
    return os.path.join(RESULTS, f"{task}__{algo}__seed{seed}.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=list(ALGOS[:3]), choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--readme", action="store_true", help="write the table into the docs (no training)")
    args = parser.parse_args(argv)
    if args.readme:
        text = maskable_report.table(maskable_report.load(RESULTS), TASKS, ALGOS, N_STEPS)
        replace_readme_section(text, "maskable")
        if not replace_docs_section(text.strip("\n"), "maskable", DOCS_PAGE):
            print(f"note: {DOCS_PAGE} has no maskable markers", file=sys.stderr)
        return 0
    for task in args.tasks:
        for seed in args.seeds:
            for algo in args.algos:
                path = result_path(task, algo, seed)
                if os.path.exists(path):
                    continue
                data = run(task, algo, seed)
                write_result(path, data)
                print(f"{task} {algo} seed {seed}: final {data['final']:.2f}, AUC {data['auc']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
