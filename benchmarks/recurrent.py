"""
Recurrent policies where memory matters: ``RecurrentTRPO`` against sb3-contrib's ``RecurrentPPO`` and against our
feed-forward ``TRPO`` on the same task, and the recurrent speed run.

    python benchmarks/recurrent.py --algos trpo_lstm ppo_lstm trpo --envs CartPoleNoVel-v1 --seeds 0 1 2
    python benchmarks/recurrent.py --defaults --envs CartPoleNoVel-v1 PendulumNoVel-v1   # the class defaults
    python benchmarks/recurrent.py --speed            # env-steps/s, ours vs RecurrentPPO at equal rollout sizes
    python benchmarks/recurrent.py --readme           # the tables into docs/modules/recurrent_trpo.md

Each cell (algorithm, task, seed) is one result file in ``benchmarks/results/recurrent/`` (a cell whose file exists
is skipped unless ``--force``); cells run one at a time. The settings are each library's YAML:

- ``trpo_lstm`` / ``natural_pg_lstm``: ``RecurrentTRPO`` / ``RecurrentNaturalPG`` with our ``hyperparams/trpo_lstm.yml``
  / ``natural_pg_lstm.yml``;
- ``ppo_lstm``: sb3-contrib's ``RecurrentPPO`` with rl-zoo3's ``ppo_lstm.yml`` (the installed rl-zoo3's);
- ``trpo``: our feed-forward ``TRPO`` with ``trpo_lstm.yml``'s entry, ``MlpPolicy`` and the LSTM keywords left out
  (the same network otherwise), so that the difference is the memory.

With ``--defaults`` each algorithm runs at its class defaults instead, as a user without the zoo runs it:
``Cls("MlpLstmPolicy", env, seed=s)`` (``"MlpPolicy"`` for ``trpo``), one env, no normalization, 100K steps (or
``--steps``); those cells are stored as ``{algo}-defaults``.

The tasks are rl-zoo3's registrations (``CartPoleNoVel-v1``, ``PendulumNoVel-v1``: the velocities masked), with
``VecNormalize`` where the YAML says ``normalize``. 10 deterministic evaluation episodes every 10% of the budget on a
separate env (its normalization statistics synced from training), and at the end 20 episodes: the *final* return.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reporting import recurrent_report, results_io, sections  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "recurrent")
PAGE = os.path.join(ROOT, "docs", "modules", "recurrent_trpo.md")
ALGOS = ("trpo_lstm", "natural_pg_lstm", "ppo_lstm", "trpo")
LABELS = {
    "trpo_lstm": "RecurrentTRPO",
    "natural_pg_lstm": "RecurrentNaturalPG",
    "ppo_lstm": "RecurrentPPO (sb3-contrib)",
    "trpo": "TRPO (feed-forward)",
}
LSTM_KEYWORDS = ("lstm_hidden_size", "n_lstm_layers", "shared_lstm", "enable_critic_lstm", "lstm_kwargs")
ENV_KEYS = ("n_envs", "n_timesteps", "normalize", "policy")
DEFAULTS_SUFFIX = "-defaults"
DEFAULTS_BUDGET = 100_000


def yaml_entry(algo: str, env_id: str) -> dict[str, Any]:
    """The YAML entry that ``algo`` trains with on ``env_id`` (see the module docstring)."""
    if algo == "ppo_lstm":
        import rl_zoo3

        path = os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", "ppo_lstm.yml")
    else:
        path = os.path.join(ROOT, "hyperparams", f"{'trpo_lstm' if algo == 'trpo' else algo}.yml")
    with open(path) as f:
        return dict(yaml.safe_load(f)[env_id])


def schedule(value: Any) -> Any:
    """rl-zoo3's ``lin_X``: a linear schedule from X to 0."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def model_settings(algo: str, env_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """:return: the env settings (n_envs, n_timesteps, normalize) and the constructor keywords"""
    import torch.nn as nn

    if algo.endswith(DEFAULTS_SUFFIX):  # the class defaults: no keywords, one env, no normalization
        policy = "MlpPolicy" if algo == "trpo" + DEFAULTS_SUFFIX else "MlpLstmPolicy"
        return {"n_envs": 1, "n_timesteps": DEFAULTS_BUDGET, "normalize": False, "policy": policy}, {}
    entry = yaml_entry(algo, env_id)
    env_settings = {key: entry.pop(key) for key in ENV_KEYS if key in entry}
    kwargs = {key: schedule(value) for key, value in entry.items()}
    policy_kwargs = eval(kwargs.pop("policy_kwargs", "dict()"), {"nn": nn})  # rl-zoo3's YAML convention
    if algo == "trpo":
        env_settings["policy"] = "MlpPolicy"
        policy_kwargs = {key: value for key, value in policy_kwargs.items() if key not in LSTM_KEYWORDS}
    kwargs["policy_kwargs"] = policy_kwargs
    return env_settings, kwargs


def algorithm_class(algo: str) -> type:
    algo = algo.removesuffix(DEFAULTS_SUFFIX)
    if algo == "ppo_lstm":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    import sb3_trpo_ext

    return {"trpo_lstm": sb3_trpo_ext.RecurrentTRPO, "natural_pg_lstm": sb3_trpo_ext.RecurrentNaturalPG}.get(
        algo, sb3_trpo_ext.TRPO
    )


def make_env(env_id: str, n_envs: int, seed: int, normalize: bool, gamma: float, training: bool = True) -> Any:
    import rl_zoo3.import_envs  # noqa: F401  (registers the NoVel tasks)
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, gamma=gamma, training=training, norm_reward=training)
    return env


def result_path(algo: str, env_id: str, seed: int) -> str:
    return os.path.join(RESULTS, f"{algo}_{env_id}_seed{seed}.json")


def train_cell(algo: str, env_id: str, seed: int, steps: int | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; :return: its data (curve, final return, time)"""
    import torch as th
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    th.set_num_threads(1)
    env_settings, kwargs = model_settings(algo, env_id)
    budget = int(steps or env_settings["n_timesteps"])
    n_envs, normalize = int(env_settings.get("n_envs", 1)), bool(env_settings.get("normalize", False))
    gamma = float(kwargs.get("gamma", 0.99))
    env = make_env(env_id, n_envs, seed, normalize, gamma)
    eval_env = make_env(env_id, 1, seed + 1000, normalize, gamma, training=False)
    log_path = tempfile.mkdtemp(prefix="recurrent_eval_")  # EvalCallback keeps its curve only with a log_path
    evaluations = EvalCallback(
        eval_env, n_eval_episodes=10, eval_freq=max(1, budget // 10 // n_envs), log_path=log_path, verbose=0
    )
    model = algorithm_class(algo)(env_settings["policy"], env, seed=seed, device="cpu", **kwargs)
    start = time.perf_counter()
    model.learn(budget, callback=evaluations)
    seconds = time.perf_counter() - start
    final_rewards, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True, return_episode_rewards=True)
    return {
        "algo": algo,
        "env": env_id,
        "seed": seed,
        "budget": budget,
        "timesteps": [int(t) for t in evaluations.evaluations_timesteps],
        "returns": [float(np.mean(r)) for r in evaluations.evaluations_results],
        "final": float(np.mean(final_rewards)),
        "train_seconds": seconds,
        "settings": {key: repr(value) for key, value in {**env_settings, **kwargs}.items()},
    }


# ------------------------------------------------------------------ speed


def speed(rounds: int, steps: int) -> dict[str, Any]:
    """
    Env-steps/s of ``RecurrentTRPO`` (``trpo_lstm``'s CartPoleNoVel-v1 entry) and ``RecurrentPPO`` (rl-zoo3's entry
    with the same ``n_envs``, ``n_steps`` and network): equal rollout sizes, the rounds alternating, the best of each.
    """
    import torch as th

    th.set_num_threads(1)
    env_id = "CartPoleNoVel-v1"
    rates: dict[str, list[float]] = {"trpo_lstm": [], "ppo_lstm": []}
    ours_env, ours = model_settings("trpo_lstm", env_id)
    for _ in range(rounds):
        for algo in rates:
            env_settings, kwargs = model_settings(algo, env_id)
            if algo == "ppo_lstm":  # the same rollout and network as ours
                env_settings["n_envs"] = ours_env["n_envs"]
                kwargs.update(n_steps=ours["n_steps"], policy_kwargs=ours["policy_kwargs"])
            env = make_env(env_id, int(env_settings["n_envs"]), 0, True, float(kwargs["gamma"]))
            model = algorithm_class(algo)(env_settings["policy"], env, seed=0, device="cpu", **kwargs)
            model.learn(int(ours["n_steps"]) * int(env_settings["n_envs"]))  # warm-up: one update
            start = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            rates[algo].append(steps / (time.perf_counter() - start))
    ppo_env, ppo = model_settings("ppo_lstm", env_id)
    return {
        "env": env_id,
        "n_envs": ours_env["n_envs"],
        "n_steps": ours["n_steps"],
        "steps_per_round": steps,
        "rates": rates,
        "ppo_epochs": ppo.get("n_epochs", 10),
        "ppo_batch_size": ppo.get("batch_size", 128),
        "cpu": platform.processor() or platform.machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=["trpo_lstm", "ppo_lstm", "trpo"])
    parser.add_argument("--envs", nargs="+", default=["CartPoleNoVel-v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="budget (default: the YAML's n_timesteps)")
    parser.add_argument("--force", action="store_true", help="train cells whose result file exists")
    parser.add_argument("--defaults", action="store_true", help="the class defaults instead of the YAML (see above)")
    parser.add_argument("--speed", action="store_true", help="the speed run instead of training")
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--speed-steps", type=int, default=10_240)
    parser.add_argument("--readme", action="store_true", help="write the tables into the docs page")
    args = parser.parse_args(argv)
    if args.readme:
        sections.replace_readme_section(
            recurrent_report.report(RESULTS, ALGOS, LABELS, DEFAULTS_SUFFIX), "recurrent", readme=PAGE
        )
        return 0
    if args.speed:
        data = speed(args.speed_rounds, args.speed_steps)
        results_io.write_result(os.path.join(RESULTS, "speed.json"), data)
        print(data["rates"])
        return 0
    for env_id in args.envs:
        for seed in args.seeds:
            for algo in (f"{name}{DEFAULTS_SUFFIX}" if args.defaults else name for name in args.algos):
                path = result_path(algo, env_id, seed)
                if os.path.exists(path) and not args.force:
                    continue
                data = train_cell(algo, env_id, seed, args.steps)
                results_io.write_result(path, data)
                print(f"{algo} {env_id} seed {seed}: final {data['final']:.1f} ({data['train_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
