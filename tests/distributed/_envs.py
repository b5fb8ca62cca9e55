"""
Small envs for the RayVecEnv tests: Dict and Tuple observations and images, with an ``rgb_array`` render.

The test modules register this module to be pickled by value (``cloudpickle.register_pickle_by_value``): Ray's
workers cannot import it, since ``tests/distributed`` is not on their path.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ShapesEnv(gym.Env):
    """
    Random observations of a chosen kind, episodes of random length (1 to 12 steps) that end by termination.

    :param kind: ``"dict"``, ``"tuple"`` or ``"image"`` (12x12x3 uint8, channel last)
    :param render_mode: ``"rgb_array"`` (an 8x8 image whose colour shows the step) or None
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}

    def __init__(self, kind: str = "dict", render_mode: str | None = None) -> None:
        super().__init__()
        self.kind, self.render_mode = kind, render_mode
        vector = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        if kind == "dict":
            self.observation_space = spaces.Dict({"vec": vector, "mode": spaces.Discrete(3)})
        elif kind == "tuple":
            self.observation_space = spaces.Tuple((vector, spaces.Discrete(4)))
        elif kind == "image":
            self.observation_space = spaces.Box(0, 255, shape=(12, 12, 3), dtype=np.uint8)
        else:
            raise ValueError(f"kind={kind!r}")
        self.action_space = spaces.Discrete(2)
        self.counter = 0
        """An attribute for get_attr/set_attr tests."""
        self._t, self._length = 0, 1

    def _obs(self) -> Any:
        vector = self.np_random.uniform(-1.0, 1.0, size=3).astype(np.float32)
        if self.kind == "dict":
            return {"vec": vector, "mode": int(self.np_random.integers(3))}
        if self.kind == "tuple":
            return vector, int(self.np_random.integers(4))
        return self.np_random.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._t, self._length = 0, int(self.np_random.integers(1, 13))
        return self._obs(), {"options": options}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._t += 1
        return self._obs(), float(action) - 0.5, self._t >= self._length, False, {"t": self._t}

    def render(self) -> np.ndarray:
        return np.full((8, 8, 3), 10 * self._t, dtype=np.uint8)

    def add(self, amount: int, scale: int = 1) -> int:
        """A method for env_method tests: adds ``amount * scale`` to ``counter``."""
        self.counter += amount * scale
        return self.counter
