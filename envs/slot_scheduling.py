"""
A scheduling task where most actions are invalid in most states, the one on which action masking changes the outcome
(``benchmarks/maskable.py``, ``docs/modules/maskable.md``): 8 jobs arrive one by one, each may go into one of the 3
slots of its window (of 24) that is still free, or be skipped; the earlier slot of its window pays more (1, 0.6, 0.3).
Placing a job in a slot that is taken or outside its window makes the schedule infeasible: reward -1 and the episode
ends. With masks only the feasible slots (and skip) can be chosen, about 3 of 25 actions.

Importing this module registers it as ``SlotScheduling-v0`` (for the zoo: ``--gym-packages envs.slot_scheduling``, or
``benchmarks.maskable``, which imports it).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class SlotSchedulingEnv(gym.Env):
    """
    Jobs into time slots (see the module's docstring). Observation: which slots are taken, the current job's window
    (one-hot over the slots) and the share of jobs left; action: a slot, or the last action, skip the job.

    :param n_slots: the number of slots
    :param n_jobs: the jobs of an episode
    :param window: the slots a job may take, from its (random) earliest one
    """

    VALUES = (1.0, 0.6, 0.3)

    def __init__(self, n_slots: int = 24, n_jobs: int = 8, window: int = 3) -> None:
        self.n_slots, self.n_jobs, self.window = n_slots, n_jobs, window
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2 * n_slots + 1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(n_slots + 1)
        self.taken = np.zeros(n_slots, dtype=bool)
        self.starts = np.zeros(n_jobs, dtype=int)
        self.job = 0

    def _observation(self) -> np.ndarray:
        in_window = np.zeros(self.n_slots, dtype=np.float32)
        if self.job < self.n_jobs:
            in_window[self.starts[self.job] : self.starts[self.job] + self.window] = 1.0
        left = np.float32((self.n_jobs - self.job) / self.n_jobs)
        return np.concatenate([self.taken.astype(np.float32), in_window, [left]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.taken[:] = False
        self.starts = self.np_random.integers(0, self.n_slots - self.window + 1, self.n_jobs)
        self.job = 0
        return self._observation(), {}

    def action_masks(self) -> np.ndarray:
        """:return: True for the free slots of the current job's window, and for skip"""
        valid = np.zeros(self.n_slots + 1, dtype=bool)
        start = self.starts[self.job]
        valid[start : start + self.window] = ~self.taken[start : start + self.window]
        valid[-1] = True
        return valid

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        if not self.action_masks()[action]:
            return self._observation(), -1.0, True, False, {"infeasible": True}
        reward = 0.0
        if action < self.n_slots:
            self.taken[action] = True
            reward = self.VALUES[action - self.starts[self.job]]
        self.job += 1
        done = self.job == self.n_jobs
        if done:
            self.job -= 1  # the observation after the last job keeps its shape
        observation = self._observation()
        self.job += int(done)
        return observation, reward, done, False, {}


if "SlotScheduling-v0" not in gym.registry:
    gym.register("SlotScheduling-v0", entry_point=SlotSchedulingEnv)
