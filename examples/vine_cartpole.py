"""
The vine method on CartPole-v1: every action rolled out from each rollout-set state (Eq. 15), branches in parallel
worker processes (a plain SubprocVecEnv). The budget counts trunk and branch simulator steps.

    python examples/vine_cartpole.py --timesteps 300000 --n-envs 2
"""

import argparse

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_trpo_ext import VineTRPO

if __name__ == "__main__":  # SubprocVecEnv re-imports this module in its workers
    parser = argparse.ArgumentParser()
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--n-envs", type=int, default=2)
    args = parser.parse_args()

    env = make_vec_env("CartPole-v1", n_envs=args.n_envs, seed=0, vec_env_cls=SubprocVecEnv)
    model = VineTRPO(
        "MlpPolicy", env, n_steps=512, n_rollout_states=64, n_actions_per_state=2, rollout_length=50,
        gae_lambda=0.98, cg_damping=1e-3, n_critic_updates=20, seed=0, verbose=1,
    )  # fmt: skip
    model.learn(args.timesteps)
    mean_return, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=123), n_eval_episodes=10)
    print(f"VineTRPO: mean return {mean_return:.1f} after {model.num_timesteps} simulator steps")
