"""
Learning: our algorithms vs sb3-contrib's TRPO on Hopper-v5 at equal simulator steps, side by side in one run.

Each (algorithm, seed) trains in its own process (``--workers`` at a time, one torch thread each) with rl-zoo3's
MuJoCo TRPO settings and VecNormalize; every ``--eval-every`` steps the policy is evaluated on 10 deterministic
episodes. Prints mean evaluation returns over seeds per checkpoint and writes a plot to benchmarks/results/.

Equal effective trust region: sb3-contrib's target_kl 0.01 averages the KL over Hopper's 3 action dimensions, so it
is our 0.03 (the paper's whole-distribution KL). VineTRPO counts trunk plus branch steps against the same budget.

    python benchmarks/learning.py --steps 200000 --seeds 0 1 --algos sb3-contrib trpo
    python benchmarks/learning.py --steps 200000 --seeds 0 1 --algos trpo vine
"""

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

ZOO = dict(n_steps=1024, batch_size=128, gamma=0.99, gae_lambda=0.95, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20)
VINE = dict(n_rollout_states=64, n_actions_per_state=4, rollout_length=50)  # K and m from the paper's Table 2
ALGOS = ("sb3-contrib", "trpo", "npg", "vine")


def make_model(algo: str, env: Any, seed: int) -> Any:
    if algo == "sb3-contrib":
        from sb3_contrib import TRPO as ContribTRPO

        return ContribTRPO("MlpPolicy", env, target_kl=0.01, seed=seed, **ZOO)
    from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO

    if algo == "trpo":
        return TRPO("MlpPolicy", env, target_kl=0.03, seed=seed, **ZOO)
    if algo == "npg":
        return NaturalPG("MlpPolicy", env, target_kl=0.03, seed=seed, **ZOO)
    return VineTRPO("MlpPolicy", env, target_kl=0.03, seed=seed, **VINE, **ZOO)


def run(job: tuple[str, int, int, int, str]) -> tuple[str, int, list[int], list[float], float]:
    algo, seed, steps, eval_every, env_id = job
    import torch as th
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    th.set_num_threads(1)
    env = VecNormalize(make_vec_env(env_id, n_envs=2, seed=seed), gamma=0.99)
    eval_env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed + 1000), training=False, norm_reward=False)
    model = make_model(algo, env, seed)
    checkpoints, returns = [], []
    start = time.perf_counter()
    while model.num_timesteps < steps:
        model.learn(eval_every, reset_num_timesteps=False)
        eval_env.obs_rms = env.obs_rms.copy()
        mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        checkpoints.append(model.num_timesteps)
        returns.append(float(mean_return))
    return algo, seed, checkpoints, returns, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--algos", nargs="+", default=["sb3-contrib", "trpo"], choices=ALGOS)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    jobs = [(algo, seed, args.steps, args.eval_every, args.env) for algo in args.algos for seed in args.seeds]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(run, jobs)

    by_algo: dict[str, list[tuple[list[int], list[float], float]]] = {}
    for algo, _, checkpoints, returns, seconds in results:
        by_algo.setdefault(algo, []).append((checkpoints, returns, seconds))
    print(f"{args.env}, seeds {args.seeds}: mean evaluation return (10 episodes, deterministic) over seeds")
    print(f"{'steps':>8} " + " ".join(f"{algo:>14}" for algo in by_algo))
    n_points = min(len(runs[0][0]) for runs in by_algo.values())
    for i in range(n_points):
        step = next(iter(by_algo.values()))[0][0][i]
        cells = " ".join(f"{np.mean([r[1][i] for r in runs]):>14.0f}" for runs in by_algo.values())
        print(f"{step:>8} {cells}")
    print(f"{'seconds':>8} " + " ".join(f"{np.mean([r[2] for r in runs]):>14.0f}" for runs in by_algo.values()))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results_dir, exist_ok=True)
    plt.figure(figsize=(6, 4))
    for algo, runs in by_algo.items():
        plt.plot(runs[0][0][:n_points], np.mean([r[1][:n_points] for r in runs], axis=0), marker="o", label=algo)
    plt.xlabel("simulator steps")
    plt.ylabel("mean evaluation return")
    plt.title(f"{args.env}, {len(args.seeds)} seeds")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.tight_layout()
    path = os.path.join(results_dir, f"learning_{args.env}_{'_vs_'.join(args.algos)}.png")
    plt.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
