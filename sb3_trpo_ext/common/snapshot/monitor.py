"""Pausing the Monitor / RecordEpisodeStatistics layers of an env during branch rollouts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
from gymnasium import wrappers as gym_wrappers
from stable_baselines3.common.monitor import Monitor

from sb3_trpo_ext.common.snapshot.core import _find_adapter, _layers


def _is_episode_recorder(layer: Any) -> bool:
    return isinstance(layer, (Monitor, gym_wrappers.RecordEpisodeStatistics))


_PAUSED_MARK = "_sb3_trpo_ext_monitor_paused"


@contextmanager
def monitor_paused(env: gym.Env) -> Iterator[None]:
    """
    Within this context, the ``Monitor`` and ``RecordEpisodeStatistics`` layers of ``env`` record nothing: their
    ``step`` and ``reset`` go straight to the wrapped env (no episode added to the statistics, no ``info["episode"]``,
    no row in the results file, ``total_steps`` unchanged). On exit, their current-episode accumulators are put back
    as they were on entry. Nested use is fine (the outermost context restores).

    :param env: a (wrapped) gymnasium env
    """
    paused = []
    try:
        for layer in _layers(env):
            if not isinstance(layer, gym.Wrapper) or not _is_episode_recorder(layer) or _PAUSED_MARK in vars(layer):
                continue
            adapter = _find_adapter(layer)
            saved = adapter.capture(layer)
            layer_dict = vars(layer)
            layer_dict[_PAUSED_MARK] = True
            layer_dict["step"] = _passthrough_step(layer)
            layer_dict["reset"] = _passthrough_reset(layer)
            paused.append((layer, adapter, saved))
        yield
    finally:
        for layer, adapter, saved in reversed(paused):
            layer_dict = vars(layer)
            for key in (_PAUSED_MARK, "step", "reset"):
                layer_dict.pop(key, None)
            adapter.restore(layer, saved)


def _passthrough_step(layer: gym.Wrapper) -> Callable[[Any], Any]:
    def step(action: Any) -> Any:
        return layer.env.step(action)

    return step


def _passthrough_reset(layer: gym.Wrapper) -> Callable[..., Any]:
    def reset(**kwargs: Any) -> Any:
        return layer.env.reset(**kwargs)

    return reset
