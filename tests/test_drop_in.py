"""
Drop-in behaviour that SB3's own suite relies on: a fast path runs only where it computes what SB3 computes, the
decision (``model.backends``) is the one every part reads, and the same observations take the same path.
"""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack
from torch import nn

import sb3_trpo_ext.common.rollouts as rollouts_module
from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO
from sb3_trpo_ext.common.backends import SB3_CODE, choose_backends, is_stock_policy

ALGORITHMS = [TRPO, NaturalPG, VineTRPO]
SMALL: dict[str, dict[str, Any]] = {
    "TRPO": dict(n_steps=64, batch_size=32),
    "NaturalPG": dict(n_steps=64, batch_size=32),
    "VineTRPO": dict(n_steps=64, batch_size=32, n_rollout_states=8, n_actions_per_state=2, rollout_length=5),
}


def small(algorithm: type) -> dict[str, Any]:
    return dict(SMALL[algorithm.__name__], n_critic_updates=2, seed=0)


class ConstantValuePolicy(ActorCriticPolicy):
    """SB3's test_gae policy: ``forward`` overridden to report a constant value."""

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        actions, values, log_prob = super().forward(obs, deterministic)
        return actions, th.full_like(values, 0.5), log_prob


class ValuesSeen(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.values: list[np.ndarray] = []

    def _on_rollout_end(self) -> None:
        self.values.append(self.locals["rollout_buffer"].values.copy())

    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
def test_a_policy_that_overrides_forward_is_called_by_the_rollouts(algorithm: type) -> None:
    model = algorithm(ConstantValuePolicy, "CartPole-v1", **small(algorithm))
    assert model.backends == SB3_CODE and not is_stock_policy(model.policy)
    seen = ValuesSeen()
    model.learn(64, callback=seen)
    assert np.all(seen.values[0] == 0.5)  # the buffer holds what the user's forward returned


class BatchNormExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box, features_dim: int = 8) -> None:
        super().__init__(observation_space, features_dim)
        self.net = nn.Sequential(nn.Linear(observation_space.shape[0], features_dim), nn.BatchNorm1d(features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
def test_batch_norm_in_a_features_extractor_runs_sb3_code_and_trains(algorithm: type) -> None:
    # its running statistics are mutable buffers: torch.func's Fisher cannot trace them, SB3's own code can
    kwargs = dict(features_extractor_class=BatchNormExtractor)
    model = algorithm("MlpPolicy", "CartPole-v1", policy_kwargs=kwargs, **small(algorithm))
    assert model.backends == SB3_CODE
    before = model.policy.features_extractor.net[1].running_mean.clone()
    actor = [p.detach().clone() for p in model.policy.action_net.parameters()]
    model.learn(64)
    assert not th.equal(model.policy.features_extractor.net[1].running_mean, before)
    assert any(not th.equal(p, q) for p, q in zip(model.policy.action_net.parameters(), actor, strict=True))


def test_dropout_or_a_custom_mlp_extractor_is_not_a_stock_policy() -> None:
    model = TRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32)
    assert is_stock_policy(model.policy)
    model.policy.mlp_extractor.policy_net.append(nn.Dropout(0.1))
    assert choose_backends(model.policy) == SB3_CODE


class VectorAsDict(gym.ObservationWrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Dict({"vec": env.observation_space})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"vec": observation}


@pytest.mark.parametrize("algorithm", [TRPO, NaturalPG], ids=lambda a: a.__name__)
def test_a_dict_of_one_vector_learns_exactly_as_the_flat_box(algorithm: type) -> None:
    # SB3's test_dict_env::test_consistency: the same observations must take the same (NumPy) path
    # (each model learns right after it is built: building one re-seeds torch's global RNG)
    flat = algorithm("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8, 8]), **small(algorithm))
    flat.learn(128)
    dict_env = DummyVecEnv([lambda: VectorAsDict(gym.make("Pendulum-v1"))])
    nested = algorithm("MultiInputPolicy", dict_env, policy_kwargs=dict(net_arch=[8, 8]), **small(algorithm))
    nested.learn(128)
    assert nested.backends == flat.backends and flat.backends.fisher == "numpy-gauss-newton"
    obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        flat.predict(obs, deterministic=True)[0], nested.predict({"vec": obs}, deterministic=True)[0]
    )


def test_the_rollouts_follow_the_backends_the_user_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"torch actor": 0, "sb3 loop": 0}
    torch_forward = rollouts_module.RolloutPolicy._torch_forward
    sb3_loop = OnPolicyAlgorithm.collect_rollouts

    def count_torch(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["torch actor"] += 1
        return torch_forward(self, *args, **kwargs)

    def count_sb3(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["sb3 loop"] += 1
        return sb3_loop(self, *args, **kwargs)

    monkeypatch.setattr(rollouts_module.RolloutPolicy, "_torch_forward", count_torch)
    monkeypatch.setattr(OnPolicyAlgorithm, "collect_rollouts", count_sb3)
    model = TRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=0)
    model.learn(64)
    assert calls == {"torch actor": 0, "sb3 loop": 0}  # NumPy actor and critic
    model.backends = model.backends._replace(rollout_actor="torch", rollout_critic="torch")
    model.learn(64)
    assert calls == {"torch actor": 64, "sb3 loop": 0}
    model.backends = model.backends._replace(rollouts="sb3")
    model.learn(64)
    assert calls == {"torch actor": 64, "sb3 loop": 1}


def test_vine_trains_on_a_frame_stacked_dict_observation_space() -> None:
    class TwoVectors(gym.ObservationWrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            box = spaces.Box(-np.inf, np.inf, (2,), np.float32)
            self.observation_space = spaces.Dict({"a": box, "b": spaces.Box(-np.inf, np.inf, (2,), np.float32)})

        def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
            return {"a": observation[:2].astype(np.float32), "b": observation[2:].astype(np.float32)}

    venv = VecFrameStack(DummyVecEnv([lambda: TwoVectors(gym.make("CartPole-v1"))] * 2), n_stack=2)
    model = VineTRPO("MultiInputPolicy", venv, **small(VineTRPO))
    actor = [p.detach().clone() for p in model.policy.action_net.parameters()]
    model.learn(64 * 2)
    assert model.vine_batch.observations["a"].shape == (16, 4)  # two stacked frames of 2
    assert np.isfinite(model.vine_batch.q_values.numpy()).all()
    assert any(not th.equal(p, q) for p, q in zip(model.policy.action_net.parameters(), actor, strict=True))


def test_vine_with_more_rollout_states_than_the_trunk_visits_warns_and_uses_every_state() -> None:
    # SB3's tests build the vine with A2C-size rollouts (n_steps=5 ... 64): as sb3-contrib does for a truncated
    # mini-batch, warn and go on
    with pytest.warns(UserWarning, match="n_rollout_states=64 exceeds the trunk's visited states"):
        model = VineTRPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, n_actions_per_state=2, rollout_length=3)
    model.learn(8)
    assert model.vine_batch is not None and model.vine_batch.q_values.shape == (8, 2)


def test_the_stock_policies_as_users_make_them_keep_the_fast_paths() -> None:
    # the speed figures rest on these: MlpPolicy on a Box env, CnnPolicy (SB3's NatureCNN) on images
    from conftest import TinyEnv

    mlp = TRPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32)
    assert tuple(mlp.backends) == ("fast", "numpy-mlp", "numpy-mlp", "numpy-adam", "numpy-gauss-newton", "float32")
    cnn = TRPO("CnnPolicy", TinyEnv(spaces.Discrete(3), "image"), n_steps=64, batch_size=32)
    assert type(cnn.policy.features_extractor).__name__ == "NatureCNN"
    assert cnn.backends.rollouts == "fast" and cnn.backends.fisher == "gauss-newton"


@pytest.mark.parametrize("rollouts", ["fast", "sb3"])
def test_vine_branches_from_every_trunk_state_exactly_once_on_either_rollout_loop(rollouts: str) -> None:
    # the per-step hook (rollouts.AfterStep) reaches SB3's own loop through its callback; with as many rollout
    # states as trunk states, a hook called at the wrong step would miss one state and take another twice
    model = VineTRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_rollout_states=32, n_actions_per_state=2)
    model.backends = model.backends._replace(rollouts=rollouts)
    model.learn(32)
    trunk = model.rollout_buffer.observations.reshape(-1, 4)
    starts = model.vine_batch.observations[::2].numpy()
    assert starts.shape == trunk.shape == (32, 4)
    matches = (starts[:, None, :] == trunk[None, :, :]).all(axis=2)  # floats, matched exactly
    assert (matches.sum(axis=0) == 1).all() and (matches.sum(axis=1) == 1).all()
