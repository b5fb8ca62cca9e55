"""
Train one algorithm at its class defaults, exactly as a user without the zoo writes it, and evaluate it on the way:

    model = Cls("MlpPolicy", env_id, seed=seed)     # no YAML, no VecNormalize, one env
    model.learn(budget, callback=EvalCallback(...))  # 10 deterministic episodes every eval_freq counted steps

    python benchmarks/train_defaults.py --algo trpo_ext --env Ant-v5 --seed 0 -n 500000 --eval-freq 25000 -f LOGDIR
    python benchmarks/train_defaults.py --algo sb3-contrib --env Ant-v5 --seed 0 -n 500000 --eval-freq 25000 -f LOGDIR

``--algo`` is ``trpo_ext`` (our ``TRPO``), ``natural_pg`` (``NaturalPG``), ``vine_trpo`` (``VineTRPO``) or
``sb3-contrib`` (sb3-contrib's ``TRPO``). ``-params key:value ...`` adds constructor keywords (for pilots and
ablations of a candidate default). The evaluations go to ``LOGDIR/defaults/{env}_1/evaluations.npz``, the layout
rl-zoo3 writes, so ``benchmarks/matrix.py`` (preset ``defaults``) reads them as it reads a zoo run's.

VineTRPO counts trunk and branch (simulator) steps in its timesteps but calls callbacks on trunk steps only: its
callback frequency is scaled by the trunk's share of an iteration's simulator steps, at least one trunk, so it too is
evaluated about every ``eval_freq`` counted steps.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.monitor import Monitor

ALGOS = ("trpo_ext", "natural_pg", "vine_trpo", "sb3-contrib")


def algorithm_class(algo: str) -> type:
    """The class a user imports for ``algo``."""
    if algo == "sb3-contrib":
        from sb3_contrib import TRPO

        return TRPO
    import sb3_trpo_ext

    return {"trpo_ext": sb3_trpo_ext.TRPO, "natural_pg": sb3_trpo_ext.NaturalPG, "vine_trpo": sb3_trpo_ext.VineTRPO}[algo]


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["target_kl:0.08", "use_sde:True"]`` -> ``{"target_kl": 0.08, "use_sde": True}`` (rl-zoo3's ``-params``)."""
    params = {}
    for item in items:
        key, _, value = item.partition(":")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def callback_frequency(model: Any, eval_freq: int) -> int:
    """Callback calls between evaluations for about ``eval_freq`` counted steps (VineTRPO: trunk steps only)."""
    if not hasattr(model, "n_rollout_states"):
        return max(eval_freq // model.n_envs, 1)
    trunk = model.n_envs * model.n_steps
    branches = model.n_rollout_states * model.n_actions_per_state * model.rollout_length
    return max(int(round(eval_freq * trunk / (trunk + branches))), trunk) // model.n_envs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=ALGOS, required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("-n", "--n-timesteps", type=int, required=True)
    parser.add_argument("--eval-freq", type=int, required=True, help="counted steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("-f", "--log-folder", required=True)
    parser.add_argument("-params", "--hyperparams", nargs="*", default=[], help="extra constructor keywords key:value")
    args = parser.parse_args(argv)

    th.set_num_threads(1)
    model = algorithm_class(args.algo)("MlpPolicy", args.env, seed=args.seed, **parse_params(args.hyperparams))
    eval_env = Monitor(gym.make(args.env))
    eval_env.reset(seed=args.seed + 10_000)
    log_path = os.path.join(args.log_folder, "defaults", f"{args.env}_1")
    callback = EvalCallback(
        eval_env,
        n_eval_episodes=args.eval_episodes,
        eval_freq=callback_frequency(model, args.eval_freq),
        log_path=log_path,
        deterministic=True,
        verbose=0,
    )
    model.learn(args.n_timesteps, callback=callback)
    print(f"evaluations: {os.path.join(log_path, 'evaluations.npz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
