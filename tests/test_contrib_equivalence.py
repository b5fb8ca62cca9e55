"""
Ours and sb3-contrib's TRPO take the same step on the same data, once our settings are converted to its conventions.

sb3-contrib averages the diagonal-Gaussian KL over the d action dimensions, so its Fisher is ours / d: ours with
``target_kl = d t`` and ``cg_damping = d c`` solves the same system as sb3-contrib with ``t`` and ``c`` (its
direction is ours x d) and bounds the same KL. The two steps differ only in their length (ours scales the full step
with the undamped ``s^T F s``, sb3-contrib with the damped one, then each line search shrinks it): the change of every
parameter tensor must be one and the same multiple of sb3-contrib's.
"""

import copy

import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import configure_logger

from sb3_trpo_ext import TRPO

sb3_contrib = pytest.importorskip("sb3_contrib")


class _NoOp(BaseCallback):
    def _on_step(self) -> bool:
        return True


def test_one_update_matches_sb3_contrib_at_converted_settings() -> None:
    pytest.importorskip("mujoco")
    th.set_num_threads(1)
    env = make_vec_env("Swimmer-v5", n_envs=2, seed=0)  # 2-D actions: d = 2
    d, target, damping = 2, 0.01, 0.1
    common = dict(n_steps=256, batch_size=128, gamma=0.99, cg_max_steps=25, n_critic_updates=5, seed=0)
    theirs = sb3_contrib.TRPO("MlpPolicy", env, target_kl=target, cg_damping=damping, **common)
    ours = TRPO("MlpPolicy", env, target_kl=d * target, cg_damping=d * damping, **common)
    ours.policy.load_state_dict(theirs.policy.state_dict())
    ours.policy.optimizer.load_state_dict(theirs.policy.optimizer.state_dict())
    for model in (theirs, ours):
        model.set_logger(configure_logger(0, None, "", False))

    theirs._setup_learn(1_000, None)
    callback = _NoOp()
    callback.init_callback(theirs)
    theirs.collect_rollouts(theirs.env, callback, theirs.rollout_buffer, n_rollout_steps=theirs.n_steps)
    ours.rollout_buffer = copy.deepcopy(theirs.rollout_buffer)  # the same samples, advantages and returns
    before = {name: value.clone() for name, value in theirs.policy.state_dict().items()}
    theirs.train()
    ours.train()

    their_kl = theirs.logger.name_to_value["train/kl_divergence_loss"]  # averaged over the dimensions
    our_kl = ours.logger.name_to_value["train/kl_divergence_loss"]  # the whole KL
    assert ours.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert our_kl <= d * target and their_kl <= target
    ratios = []
    for name, start in before.items():
        if "value" in name:  # the critics' fits differ by their mini-batch order
            continue
        theirs_change = (theirs.policy.state_dict()[name] - start).flatten()
        ours_change = (ours.policy.state_dict()[name] - start).flatten()
        cosine = float(th.dot(theirs_change, ours_change) / (theirs_change.norm() * ours_change.norm()))
        assert cosine > 0.999, (name, cosine)
        ratios.append(float(ours_change.norm() / theirs_change.norm()))
    assert len(ratios) == 7  # log_std, two hidden layers and the action layer (weights and biases)
    assert max(ratios) / min(ratios) < 1.002, ratios
