"""
Ablation: where ours and sb3-contrib's TRPO differ, one change at a time, on one task (default Acrobot-v1, where
ours trails in area under the curve).

Every variant trains in this process, one after another, with rl-zoo3's settings for the task (VecNormalize, n_envs
2, n_steps 1024, batch 128), and is evaluated every ``--eval-every`` steps on 10 deterministic episodes (the eval env
uses the training env's normalization statistics). Each (variant, seed) result is saved as it ends under
``benchmarks/results/ablation/{env}/{variant}/seed_{S}.json`` and skipped when present; ``--report`` prints the table.

Variants (each differs from ``ours`` in one thing):

- ``ours``: TRPO with our YAML entry (cg_max_steps 15);
- ``damped-full-step``: the full step ``beta = sqrt(2 delta / s^T (F + damping I) s)``, with the damped Fisher as
  sb3-contrib and OpenAI baselines do (ours uses the undamped ``F``, so the first try is larger);
- ``cg-10``: our default 10 conjugate-gradient steps instead of 15;
- ``sb3-contrib``: sb3-contrib's TRPO with the same settings.

    python benchmarks/ablation.py --seeds 0 1 2 3 4
    python benchmarks/ablation.py --report          # or --readme: into README.md between its markers
"""

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch as th

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "ablation")
SETTINGS: dict[str, Any] = dict(n_steps=1024, batch_size=128, cg_max_steps=15)
VARIANTS = ("ours", "damped-full-step", "cg-10", "sb3-contrib")


def build(variant: str, env: Any, seed: int) -> Any:
    if variant == "sb3-contrib":
        from sb3_contrib import TRPO as ContribTRPO

        return ContribTRPO("MlpPolicy", env, seed=seed, **SETTINGS)
    import sb3_trpo_ext.common.base as base_module
    from sb3_trpo_ext import TRPO
    from sb3_trpo_ext.common.natural_gradient import full_step_scale

    settings = dict(SETTINGS, cg_max_steps=10) if variant == "cg-10" else SETTINGS
    model = TRPO("MlpPolicy", env, seed=seed, **settings)
    if variant == "damped-full-step":  # add the damping back into s^T F s
        damping = model.cg_damping
        base_module.full_step_scale = lambda s, fs, kl: full_step_scale(s, fs + damping * s, kl)  # type: ignore[assignment]
    else:
        base_module.full_step_scale = full_step_scale  # type: ignore[assignment]
    return model


def run(variant: str, env_id: str, seed: int, budget: int, eval_every: int) -> dict[str, Any]:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(make_vec_env(env_id, n_envs=2, seed=seed), gamma=0.99)
    eval_env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed + 1000), training=False, norm_reward=False)
    model = build(variant, env, seed)
    steps, means = [], []
    start = time.perf_counter()
    while model.num_timesteps < budget:
        model.learn(eval_every, reset_num_timesteps=False)
        eval_env.obs_rms = env.obs_rms.copy()
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        steps.append(int(model.num_timesteps))
        means.append(float(mean))
    return {"variant": variant, "env": env_id, "seed": seed, "steps": steps, "mean_return": means,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def report(env_id: str) -> str:
    lines = [
        f"Ablation on {env_id} (`python benchmarks/ablation.py`; rl-zoo3 settings, mean ± std over seeds of 10 "
        "deterministic episodes):",
        "",
        "| variant | seeds | final | area under the curve |",
        "|---|---|---|---|",
    ]
    for variant in VARIANTS:
        folder = os.path.join(RESULTS, env_id, variant)
        if not os.path.isdir(folder):
            continue
        runs = []
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name)) as f:
                runs.append(json.load(f))
        finals = np.array([run["mean_return"][-1] for run in runs])
        aucs = np.array([np.mean(run["mean_return"]) for run in runs])
        final_text = f"{finals.mean():.1f} ± {_spread(finals):.1f}"
        lines.append(f"| `{variant}` | {len(runs)} | {final_text} | {aucs.mean():.1f} ± {_spread(aucs):.1f} |")
    return "\n".join(lines)


def _spread(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Acrobot-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    args = parser.parse_args()
    if args.report or args.readme:
        text = report(args.env)
        if args.readme:
            readme_path = os.path.join(ROOT, "README.md")
            with open(readme_path) as f:
                readme = f.read()
            start = readme.index("<!-- ablation:start -->") + len("<!-- ablation:start -->")
            end = readme.index("<!-- ablation:end -->")
            with open(readme_path, "w") as f:
                f.write(readme[:start] + "\n" + text + "\n" + readme[end:])
        print(text)
        return
    th.set_num_threads(1)
    for seed in args.seeds:
        for variant in args.variants:
            path = os.path.join(RESULTS, args.env, variant, f"seed_{seed}.json")
            if os.path.exists(path):
                continue
            result = run(variant, args.env, seed, args.budget, args.eval_every)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(path + ".tmp", path)
            print(f"{variant} seed {seed}: final {result['mean_return'][-1]:.1f}, {result['wall_s']:.0f} s", flush=True)
    print(report(args.env))


if __name__ == "__main__":
    main()
