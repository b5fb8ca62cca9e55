"""
Natural policy gradient on CartPole-v1: the KL-normalized step (default) or a constant step size.

    python examples/npg_cartpole.py --step-mode kl
    python examples/npg_cartpole.py --step-mode constant --step-size 0.5
"""

import argparse

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo_ext import NaturalPG

parser = argparse.ArgumentParser()
parser.add_argument("--timesteps", type=int, default=100_000)
parser.add_argument("--step-mode", choices=["kl", "constant"], default="kl")
parser.add_argument("--step-size", type=float, default=0.1)
args = parser.parse_args()

env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
model = NaturalPG(
    "MlpPolicy", env, step_mode=args.step_mode, step_size=args.step_size, target_kl=0.01,
    n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, n_critic_updates=20, seed=0,
)  # fmt: skip
model.learn(args.timesteps)
mean_return, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=123), n_eval_episodes=10)
print(f"NaturalPG ({args.step_mode} step): mean return {mean_return:.1f}")
