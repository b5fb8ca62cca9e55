"""Shared helpers of the test-suite: the algorithms under test and tiny custom environments."""

import importlib.util
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_trpo_ext import TRPO, NaturalPG

ALGORITHMS = [TRPO, NaturalPG]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> Any:
    """Import ``benchmarks/NAME.py`` (a script folder, not a package) as module ``benchmarks_NAME``, once."""
    module_name = f"benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=ALGORITHMS, ids=lambda cls: cls.__name__)
def algorithm(request: pytest.FixtureRequest) -> type:
    """Each algorithm of the package (TRPO and NaturalPG)."""
    return request.param


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
