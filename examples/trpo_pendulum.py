"""
TRPO on Pendulum-v1 with gSDE (rl-zoo3's settings): train, evaluate, save, load.

    python examples/trpo_pendulum.py --timesteps 100000
"""

import argparse

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo_ext import TRPO

parser = argparse.ArgumentParser()
parser.add_argument("--timesteps", type=int, default=100_000)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

env = make_vec_env("Pendulum-v1", n_envs=2, seed=args.seed)
model = TRPO("MlpPolicy", env, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True, sde_sample_freq=4, verbose=1)
model.learn(args.timesteps, progress_bar=False)
model.save("trpo_pendulum")

model = TRPO.load("trpo_pendulum")
mean_return, std_return = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=1, seed=123), n_eval_episodes=10)
print(f"mean return {mean_return:.1f} +/- {std_return:.1f}")
