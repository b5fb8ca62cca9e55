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


# ---------------------------------------------------------------------------------------------------- sb3-contrib's units


ZOO_KEYS = ("n_timesteps", "n_envs", "normalize", "policy", "env_wrapper", "frame_stack")


def zoo_trpo_entry(env_id: str) -> dict:
    """rl-zoo3's trpo.yml entry for ``env_id`` (sb3-contrib's tuned settings), without the keys the zoo consumes."""
    import os

    import rl_zoo3
    import yaml

    with open(os.path.join(os.path.dirname(rl_zoo3.__file__), "hyperparams", "trpo.yml")) as f:
        entry = yaml.safe_load(f)[env_id]
    return {key: value for key, value in entry.items() if key not in ZOO_KEYS}


def first_update_changes(env_id: str, theirs_kwargs: dict, ours_kwargs: dict) -> tuple[list[float], list[float]]:
    """One update of each on the same rollout buffer: per actor tensor, the cosine and the length ratio of the changes."""
    th.set_num_threads(1)
    env = make_vec_env(env_id, n_envs=2, seed=0)
    theirs = sb3_contrib.TRPO("MlpPolicy", env, seed=0, **theirs_kwargs)
    ours = TRPO("MlpPolicy", env, seed=0, **ours_kwargs)
    ours.policy.load_state_dict(theirs.policy.state_dict())
    ours.policy.optimizer.load_state_dict(theirs.policy.optimizer.state_dict())
    for model in (theirs, ours):
        model.set_logger(configure_logger(0, None, "", False))
    theirs._setup_learn(1_000, None)
    callback = _NoOp()
    callback.init_callback(theirs)
    theirs.collect_rollouts(theirs.env, callback, theirs.rollout_buffer, n_rollout_steps=theirs.n_steps)
    ours.rollout_buffer = copy.deepcopy(theirs.rollout_buffer)
    before = {name: value.clone() for name, value in theirs.policy.state_dict().items()}
    theirs.train()
    ours.train()
    assert ours.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert theirs.logger.name_to_value["train/is_line_search_success"] == 1.0
    cosines, ratios = [], []
    for name, start in before.items():
        if "value" in name or not name.startswith(("log_std", "mlp_extractor.policy", "action_net")):
            continue  # the critics' fits differ by their mini-batch order
        theirs_change = (theirs.policy.state_dict()[name] - start).flatten()
        ours_change = (ours.policy.state_dict()[name] - start).flatten()
        cosines.append(float(th.dot(theirs_change, ours_change) / (theirs_change.norm() * ours_change.norm())))
        ratios.append(float(ours_change.norm() / theirs_change.norm()))
    env.close()
    return cosines, ratios


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCarContinuous-v0", "HalfCheetah-v4"])
def test_the_zoo_trpo_entries_given_in_sb3_contrib_units_take_sb3_contrib_first_update(env_id: str) -> None:
    # the entry unchanged, plus trust_region_units="sb3-contrib" (and sb3-contrib's cg_max_steps where the entry
    # leaves it to the default: ours is the paper's 10, sb3-contrib's 15); n_steps capped to keep the test short
    if env_id.startswith("HalfCheetah"):
        pytest.importorskip("mujoco")
    entry = zoo_trpo_entry(env_id)
    entry["n_steps"] = min(int(entry.get("n_steps", 2048)), 256)
    entry["batch_size"] = min(int(entry.get("batch_size", 128)), 256)
    ours = dict(entry, trust_region_units="sb3-contrib", cg_max_steps=entry.get("cg_max_steps", 15))
    cosines, ratios = first_update_changes(env_id, entry, ours)
    assert min(cosines) > 0.999, cosines
    # one common step length (to float32 CG rounding, amplified by small dampings such as CartPole's 1e-3)
    assert max(ratios) / min(ratios) < 1.01, ratios


def test_without_sb3_contrib_units_a_tuned_entry_takes_another_step() -> None:
    # the control: HalfCheetah's tuned target_kl=0.04 read as the whole-distribution KL (our default units) is a
    # trust region 6 times smaller, and cg_damping 0.1 a 6 times weaker damping: not sb3-contrib's direction
    pytest.importorskip("mujoco")
    entry = dict(zoo_trpo_entry("HalfCheetah-v4"), n_steps=256)
    cosines, _ = first_update_changes("HalfCheetah-v4", entry, dict(entry))
    assert min(cosines) < 0.999, cosines


def test_one_update_matches_sb3_contrib_at_converted_settings() -> None:
    # ours at target_kl = d t and cg_damping = d c (the conversion the MuJoCo YAML relies on)
    pytest.importorskip("mujoco")
    d, target, damping = 2, 0.01, 0.1  # Swimmer: 2-D actions
    common = dict(n_steps=256, batch_size=128, gamma=0.99, cg_max_steps=25, n_critic_updates=5)
    theirs = dict(common, target_kl=target, cg_damping=damping)
    cosines, ratios = first_update_changes("Swimmer-v5", theirs, dict(common, target_kl=d * target, cg_damping=d * damping))
    assert len(ratios) == 7  # log_std, two hidden layers and the action layer (weights and biases)
    assert min(cosines) > 0.999, cosines
    assert max(ratios) / min(ratios) < 1.002, ratios
