"""
What an SB3 user does without reading our README: every action space's shape, SB3's callback locals, NaN
observations, gSDE in the vine. Each case runs on TRPO, NaturalPG and VineTRPO (trunk and branches).
"""

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO

ALL_ALGORITHMS = [TRPO, NaturalPG, VineTRPO]
SMALL = dict(n_steps=32, batch_size=32, n_critic_updates=1, seed=0)
VINE_SMALL = dict(n_rollout_states=6, n_actions_per_state=2, rollout_length=4)


def small(algorithm: type) -> dict[str, Any]:
    return {**SMALL, **(VINE_SMALL if algorithm is VineTRPO else {})}


ACTION_SPACES: dict[str, spaces.Space] = {
    "box_2x2": spaces.Box(-1.0, 1.0, (2, 2), np.float32),
    "box_3": spaces.Box(-2.0, 2.0, (3,), np.float32),
    "discrete": spaces.Discrete(3),
    "multidiscrete_1": spaces.MultiDiscrete([3]),
    "multidiscrete_2": spaces.MultiDiscrete([3, 2]),
    "multibinary_3": spaces.MultiBinary(3),
}


class ShapeCheckingEnv(gym.Env):
    """
    Asserts that every action it gets is in its action space, and records the shapes in a class-level list (so that
    the vine's branch clones, which are copies of the env, record into the same list).
    """

    seen_shapes: ClassVar[list[tuple[int, ...]]] = []
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)

    def __init__(self, action_space: spaces.Space) -> None:
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self.action_space.contains(action), f"{action!r} is not in {self.action_space}"
        ShapeCheckingEnv.seen_shapes.append(np.shape(action))
        self.t += 1
        reward = float(np.mean(np.asarray(action, dtype=np.float64)))
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), reward, self.t >= 10, False, {}


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("space_name", list(ACTION_SPACES))
def test_env_and_predict_get_actions_of_the_action_space_shape(algorithm: type, space_name: str) -> None:
    space = ACTION_SPACES[space_name]
    ShapeCheckingEnv.seen_shapes.clear()
    model = algorithm("MlpPolicy", make_vec_env(lambda: ShapeCheckingEnv(space), n_envs=2, seed=0), **small(algorithm))
    model.learn(64)
    assert model._n_updates >= 1
    trunk_steps = 64 if algorithm is not VineTRPO else 2 * 32 * 1
    # trunk (and, for the vine, branch) steps all had the space's shape
    assert len(ShapeCheckingEnv.seen_shapes) >= trunk_steps
    assert set(ShapeCheckingEnv.seen_shapes) == {space.shape}
    if algorithm is VineTRPO:
        assert len(ShapeCheckingEnv.seen_shapes) > trunk_steps  # branches ran too
    obs = np.zeros(3, np.float32)
    for deterministic in (True, False):
        action, _ = model.predict(obs, deterministic=deterministic)
        assert action.shape == space.shape and space.contains(action)
        actions, _ = model.predict(np.zeros((5, 3), np.float32), deterministic=deterministic)
        assert actions.shape == (5, *space.shape) and all(space.contains(a) for a in actions)


class LocalsRecorder(BaseCallback):
    """Reads SB3's rollout locals the way a user's callback does."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        loc = self.locals
        self.records.append(
            {
                "self": loc["self"],
                "obs": np.array(loc["obs_tensor"].cpu().numpy()),
                "actions": np.array(loc["actions"]),
                "clipped_actions": np.array(loc["clipped_actions"]),
                "values": loc["values"].clone(),
                "log_probs": loc["log_probs"].clone(),
                "new_obs": np.array(loc["new_obs"]),
                "rewards": np.array(loc["rewards"]),
                "dones": np.array(loc["dones"]),
                "infos": list(loc["infos"]),
            }
        )
        return True


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_callbacks_see_sb3_rollout_locals_with_the_policy_values_and_log_probs(algorithm: type, env_id: str) -> None:
    model = algorithm("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=0), **small(algorithm))
    recorder = LocalsRecorder()
    model.learn(64, callback=recorder)
    assert len(recorder.records) == 32
    # the policy did not change during the rollout (one iteration): its values and log-probabilities now are those
    # the callback saw
    policy = model.policy
    last = recorder.records[-1]
    record = recorder.records[5]
    assert record["self"] is model
    assert isinstance(record["values"], th.Tensor) and record["values"].shape == (2, 1)
    assert isinstance(record["log_probs"], th.Tensor) and record["log_probs"].shape == (2,)
    assert record["actions"].shape == (2, *model.action_space.shape)
    assert record["rewards"].shape == (2,) and record["dones"].shape == (2,) and len(record["infos"]) == 2
    assert last["new_obs"].shape == (2, *model.observation_space.shape)
    # values and log-probs of the step's observations and actions, as the rollout buffer holds them
    buffer = model.rollout_buffer
    assert buffer.generator_ready  # train() flattened it env by env: (n_envs * n_steps, 1)
    np.testing.assert_allclose(record["values"].numpy().ravel(), buffer.values.reshape(2, 32)[:, 5], rtol=1e-6)
    np.testing.assert_allclose(record["log_probs"].numpy(), buffer.log_probs.reshape(2, 32)[:, 5], rtol=1e-6)
    assert not np.allclose(record["values"].numpy().ravel(), recorder.records[6]["values"].numpy().ravel())
    # and an independent evaluation of the same (pre-update) quantities agrees: re-run with the initial policy
    fresh = algorithm("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=0), **small(algorithm))
    with th.no_grad():
        obs = th.as_tensor(record["obs"])
        actions = th.as_tensor(record["actions"]).reshape(2, -1)
        if isinstance(model.action_space, spaces.Discrete):
            actions = actions.flatten()
        values, log_probs, _ = fresh.policy.evaluate_actions(obs, actions)
    np.testing.assert_allclose(record["values"].numpy(), values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(record["log_probs"].numpy(), log_probs.numpy(), rtol=1e-5, atol=1e-5)
    assert policy is model.policy


class NanObservationEnv(gym.Env):
    """CartPole-like: its observation turns to NaN at step ``nan_at`` of the first episode."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, nan_at: int = 7) -> None:
        self.nan_at = nan_at

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        obs = np.full(2, np.nan if self.t == self.nan_at else 0.1 * self.t, np.float32)
        return obs, 1.0, self.t >= 20, False, {}


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS, ids=lambda cls: cls.__name__)
def test_nan_observation_stops_learning_with_an_error_naming_it_and_vec_check_nan(algorithm: type) -> None:
    model = algorithm("MlpPolicy", make_vec_env(NanObservationEnv, n_envs=2, seed=0), **small(algorithm))
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    with pytest.raises(ValueError, match="Non-finite observation") as error:
        model.learn(64)
    assert "VecCheckNan" in str(error.value) and "env 0" in str(error.value)
    after = model.policy.state_dict()
    assert all(th.equal(before[k], after[k]) for k in before)  # no update was made on the poisoned data


def test_gsde_vine_draws_k_different_actions_per_state_with_the_policy_log_density() -> None:
    model = VineTRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), use_sde=True, **small(VineTRPO))
    from sb3_trpo_ext.vine.rollout_set import sample_branch_actions

    observations = np.random.default_rng(0).uniform(-1, 1, (6, 3)).astype(np.float32)
    actions, log_q = sample_branch_actions(model.policy, observations, 2, "policy", np.random.default_rng(0), model.backends)
    assert actions.shape == (6, 2, 1) and log_q.shape == (6, 2)
    assert np.all(np.abs(actions[:, 0] - actions[:, 1]) > 1e-6)  # each branch its own exploration matrix
    with th.no_grad():
        distribution = model.policy.get_distribution(th.as_tensor(np.repeat(observations, 2, axis=0)))
        expected = distribution.log_prob(th.as_tensor(actions.reshape(12, 1))).numpy().reshape(6, 2)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-5)
    # and the policy takes steps (0.1.0's identical K actions gave a zero gradient and no step)
    before = model.policy.action_net.weight.detach().clone()
    model.learn(2 * 32 + 6 * 2 * 4)
    assert model._n_updates == 1 and model.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert not th.equal(before, model.policy.action_net.weight)
