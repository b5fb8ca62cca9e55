"""Learning runs (slow, `make test-slow`): return thresholds on fixed seeds within a fixed step budget."""

import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo_ext import TRPO, NaturalPG

pytestmark = pytest.mark.slow

# rl-zoo3's trpo.yml settings for these tasks
CARTPOLE = dict(n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, n_critic_updates=20)
PENDULUM = dict(n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True, sde_sample_freq=4)


def mean_eval_return(model, env_id: str) -> float:
    mean_return, _ = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=123), n_eval_episodes=10)
    return float(mean_return)


@pytest.fixture(autouse=True)
def one_thread():
    th.set_num_threads(1)


@pytest.mark.parametrize("algorithm", [TRPO, NaturalPG])
def test_cartpole_reaches_475_within_100k_steps(algorithm) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), seed=0, **CARTPOLE)
    model.learn(100_000)
    assert mean_eval_return(model, "CartPole-v1") >= 475


def test_trpo_pendulum_reaches_minus_250_within_100k_steps() -> None:
    model = TRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), seed=0, **PENDULUM)
    model.learn(100_000)
    assert mean_eval_return(model, "Pendulum-v1") >= -250
