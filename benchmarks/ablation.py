"""
Ablation: where ours and sb3-contrib's TRPO differ, one change at a time, on one task (default Acrobot-v1, where
ours trailed in area under the curve).

Every variant trains in this process, one after another, with the task's entry of our ``hyperparams/trpo_ext.yml``
(n_envs, VecNormalize when the entry says ``normalize``, and its keyword arguments; sb3-contrib gets rl-zoo3's
``trpo.yml`` entry), and is evaluated every ``--eval-every`` steps on 10 deterministic episodes (the eval env uses the
training env's normalization statistics). Each (variant, seed) result is saved as it ends under
``benchmarks/results/ablation/{env}/{variant}/seed_{S}.json`` (a result file of ``reporting/results_io.py``) and
skipped when present; ``--report`` prints the table.

Variants (each differs from ``ours`` in one thing):

- ``ours``: TRPO with our YAML entry (10 conjugate-gradient steps, our default, since this ablation);
- ``damped-full-step``: the full step ``beta = sqrt(2 delta / s^T (F + damping I) s)``, with the damped Fisher as
  sb3-contrib and OpenAI baselines do (ours uses the undamped ``F``, so the first try is larger);
- ``cg-15``: sb3-contrib's default of 15 conjugate-gradient steps (the classic YAML entries set it before this
  ablation);
- ``kl-rescale``: the line search aims a try rejected for its KL at the boundary (``rescale_on_kl``) instead of
  shrinking it by 0.8;
- ``sb3-contrib``: sb3-contrib's TRPO with rl-zoo3's settings for the task.

    python benchmarks/ablation.py --seeds 0 1 2 3 4
    python benchmarks/ablation.py --env CartPole-v1 --variants ours kl-rescale
    python benchmarks/ablation.py --report          # or --readme: into README.md between its markers
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
import yaml

if not __package__:  # run as a file, python benchmarks/ablation.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, read_result, write_result
from reporting.sections import replace_readme_section

RESULTS = os.path.join(ROOT, "benchmarks", "results", "ablation")
VARIANTS = ("ours", "cg-15", "damped-full-step", "kl-rescale", "sb3-contrib")
NOT_KEYWORDS = ("n_timesteps", "policy", "normalize", "n_envs", "env_wrapper", "frame_stack", "normalize_kwargs")


def yaml_entry(variant: str, env_id: str) -> dict[str, Any]:
    """The env's entry in our YAML (rl-zoo3's ``trpo.yml`` for sb3-contrib)."""
    if variant == "sb3-contrib":
        import rl_zoo3

        path = os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", "trpo.yml")
    else:
        path = os.path.join(ROOT, "hyperparams", "trpo_ext.yml")
    with open(path) as f:
        return dict(yaml.safe_load(f)[env_id])


def build(variant: str, env: Any, seed: int, entry: dict[str, Any]) -> Any:
    """The model of a variant: each variant is a constructor keyword of ours (no library function is replaced)."""
    settings = {key: value for key, value in entry.items() if key not in NOT_KEYWORDS}
    if variant == "sb3-contrib":
        from sb3_contrib import TRPO as ContribTRPO

        return ContribTRPO("MlpPolicy", env, seed=seed, **settings)
    from sb3_trpo_ext import TRPO

    if variant == "cg-15":
        settings["cg_max_steps"] = 15
    if variant == "damped-full-step":  # the damping back in s^T (F + damping I) s, as sb3-contrib
        settings["damped_step_length"] = True
    if variant == "kl-rescale":
        settings["line_search_rescale_on_kl"] = True
    return TRPO("MlpPolicy", env, seed=seed, **settings)


def run(variant: str, env_id: str, seed: int, budget: int, eval_every: int) -> dict[str, Any]:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    entry = yaml_entry(variant, env_id)
    env = make_vec_env(env_id, n_envs=int(entry.get("n_envs", 1)), seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    normalize = bool(entry.get("normalize", False))
    if normalize:
        env = VecNormalize(env, gamma=float(entry.get("gamma", 0.99)))
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    model = build(variant, env, seed, entry)
    steps, means = [], []
    start = time.perf_counter()
    while model.num_timesteps < budget:
        model.learn(eval_every, reset_num_timesteps=False)
        if normalize:
            eval_env.obs_rms = env.obs_rms.copy()
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        steps.append(int(model.num_timesteps))
        means.append(float(mean))
    return {"variant": variant, "env": env_id, "seed": seed, "steps": steps, "mean_return": means,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def report(env_id: str) -> str:
    lines = [
        f"Ablation on {env_id} (`python benchmarks/ablation.py --env {env_id}`; our YAML entry, rl-zoo3's for "
        "sb3-contrib; mean ± std over seeds of the mean of 10 deterministic episodes):",
        "",
        "| variant | seeds | final | area under the curve |",
        "|---|---|---|---|",
    ]
    provenance: set[tuple[str, str]] = set()
    budgets: set[tuple[int, int]] = set()  # (last evaluation, first evaluation) steps
    for variant in VARIANTS:
        folder = os.path.join(RESULTS, env_id, variant)
        if not os.path.isdir(folder):
            continue
        results = [read_result(os.path.join(folder, name)) for name in sorted(os.listdir(folder))]
        runs = [result["data"] for result in results]
        budgets.update((run["steps"][-1], run["steps"][0]) for run in runs)
        for result in results:
            provenance.add(((result["date"] or "")[:10] or "date not recorded", result["machine"] or "machine not recorded"))
        finals = np.array([run["mean_return"][-1] for run in runs])
        aucs = np.array([np.mean(run["mean_return"]) for run in runs])
        final_text = f"{finals.mean():.1f} ± {_spread(finals):.1f}"
        lines.append(f"| `{variant}` | {len(runs)} | {final_text} | {aucs.mean():.1f} ± {_spread(aucs):.1f} |")
    where = "; ".join(f"{machine_}, {date}" for date, machine_ in sorted(provenance))
    last, first = max(step for step, _ in budgets), min(step for _, step in budgets)
    lines += ["", f"Last evaluation at {last:,} steps, the first at {first:,}; run on {where} (one torch thread)."]
    return "\n".join(lines)


def _spread(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Acrobot-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    args = parser.parse_args(argv)
    if args.report or args.readme:
        envs = sorted(os.listdir(RESULTS)) if args.readme else [args.env]
        text = "\n\n".join(report(env_id) for env_id in envs)
        if args.readme:
            replace_readme_section(text, "ablation")
        print(text)
        return
    th.set_num_threads(1)
    for seed in args.seeds:
        for variant in args.variants:
            path = os.path.join(RESULTS, args.env, variant, f"seed_{seed}.json")
            if os.path.exists(path):
                continue
            result = run(variant, args.env, seed, args.budget, args.eval_every)
            write_result(path, result)
            print(f"{variant} seed {seed}: final {result['mean_return'][-1]:.1f}, {result['wall_s']:.0f} s", flush=True)
    print(report(args.env))


if __name__ == "__main__":
    main()
