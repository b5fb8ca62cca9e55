"""Shared helpers of the test-suite: the algorithms under test and tiny custom environments."""

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO

ALGORITHMS = [TRPO, VineTRPO, NaturalPG]


@pytest.fixture(params=ALGORITHMS, ids=lambda cls: cls.__name__)
def algorithm(request: pytest.FixtureRequest) -> type:
    """Each algorithm of the package (TRPO, VineTRPO and NaturalPG)."""
    return request.param


# ---------------------------------------------------------------------------------------------------- short runs

SMALL = dict(n_steps=64, batch_size=32, n_critic_updates=2, seed=0)
"""Settings of the short runs shared by the three algorithms."""
VINE_BRANCHES = dict(n_rollout_states=4, n_actions_per_state=2, rollout_length=3)
"""The vine's branch phase in short runs: 4 states x 2 actions x 1 to 3 steps, 8 to 24 simulator steps per iteration."""


def small(algorithm: type, **overrides: Any) -> dict[str, Any]:
    """``SMALL`` (plus ``VINE_BRANCHES`` for the vine), then ``overrides``."""
    return {**SMALL, **(VINE_BRANCHES if algorithm is VineTRPO else {}), **overrides}


def branch_steps_range(algorithm: type, iterations: int) -> tuple[int, int]:
    """
    The least and the most branch steps of ``iterations`` iterations with ``VINE_BRANCHES``: each branch takes its
    first action, and at most ``rollout_length`` steps (fewer when its episode ends). ``(0, 0)`` for TRPO and
    NaturalPG, whose ``num_timesteps`` counts the trunk (the steps callbacks see) alone.
    """
    if algorithm is not VineTRPO:
        return 0, 0
    branches = VINE_BRANCHES["n_rollout_states"] * VINE_BRANCHES["n_actions_per_state"]
    return iterations * branches, iterations * branches * VINE_BRANCHES["rollout_length"]


def budget(algorithm: type, iterations: int, trunk_steps: int) -> int:
    """
    A ``learn(total_timesteps)`` that runs exactly ``iterations`` iterations of ``trunk_steps`` (``n_steps *
    n_envs``) each. The vine's budget counts its branch steps too, whose number depends on where episodes end: one
    step more than ``iterations - 1`` iterations can take, which ``iterations`` iterations always reach.
    """
    least, most = branch_steps_range(algorithm, 1)
    total = (iterations - 1) * (trunk_steps + most) + (1 if least else trunk_steps)
    assert total <= iterations * (trunk_steps + least), "trunk_steps too small for an exact number of vine iterations"
    return total


class SimulatorSteps:
    """
    Counts every step of an env and of its copies (the vine's branches step deep copies of the training env, which
    share the wrapper's class and so this tally), in this process. Pass ``wrapper`` as ``make_vec_env``'s
    ``wrapper_class``.
    """

    def __init__(self) -> None:
        self.count = 0
        tally = self

        class CountSteps(gym.Wrapper):
            def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
                tally.count += 1
                return self.env.step(action)

        self.wrapper = CountSteps


class TinyEnv(gym.Env):
    """
    A cheap environment with a configurable action space and observation kind.

    The reward depends on the action and the observation, so that there is something to learn; episodes last
    ``episode_length`` steps and end by termination (wrap in ``TimeLimit`` for truncation).

    :param action_space: the action space
    :param observation: ``"box"`` (flat vector), ``"dict"`` (vector + discrete) or ``"image"`` (36x36x3 uint8)
    :param episode_length: steps until ``terminated``
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, action_space: spaces.Space | None = None, observation: str = "box", episode_length: int = 20):
        super().__init__()
        self.action_space = action_space if action_space is not None else spaces.Discrete(2)
        self.kind = observation
        if observation == "box":
            self.observation_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        elif observation == "dict":
            self.observation_space = spaces.Dict(
                {"vec": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32), "mode": spaces.Discrete(3)}
            )
        elif observation == "image":
            self.observation_space = spaces.Box(0, 255, shape=(36, 36, 3), dtype=np.uint8)
        else:
            raise ValueError(observation)
        self.episode_length = episode_length
        self._t = 0
        self._x = np.zeros(4, dtype=np.float32)

    def _obs(self) -> Any:
        if self.kind == "box":
            return self._x.copy()
        if self.kind == "dict":
            return {"vec": self._x[:3].copy(), "mode": int(self._t % 3)}
        image = np.zeros((36, 36, 3), dtype=np.uint8)
        image[..., 0] = int(127 * (self._x[0] + 1.0))
        image[: 1 + self._t % 36, :, 1] = 255
        return image

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._x = self.np_random.uniform(-1.0, 1.0, size=4).astype(np.float32)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        flat = np.asarray(action, dtype=np.float64).ravel()
        # reward actions that agree with the sign of the first observation component
        reward = float(np.mean(flat) * np.sign(self._x[0]))
        self._t += 1
        self._x = self.np_random.uniform(-1.0, 1.0, size=4).astype(np.float32)
        return self._obs(), reward, self._t >= self.episode_length, False, {}


class TinyCnn(BaseFeaturesExtractor):
    """A two-layer CNN for 36x36 images, much cheaper than NatureCNN (keeps CnnPolicy tests fast on CPU)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 16) -> None:
        super().__init__(observation_space, features_dim)
        n_channels = observation_space.shape[0]  # channel-first after SB3's VecTransposeImage
        self.cnn = nn.Sequential(
            nn.Conv2d(n_channels, 4, kernel_size=6, stride=4),
            nn.ReLU(),
            nn.Conv2d(4, 4, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with th.no_grad():
            n_flat = self.cnn(th.zeros(1, *observation_space.shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.cnn(observations))


TINY_CNN_KWARGS = dict(features_extractor_class=TinyCnn, features_extractor_kwargs=dict(features_dim=16))
