"""Adapters for gymnasium and SB3 wrappers: TimeLimit, OrderEnforcing, Monitor, RecordEpisodeStatistics, the SB3
Atari wrappers, frame stacking, Atari preprocessing and the stateless wrappers (:class:`VineWorkerWrapper` among
them)."""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import wrappers as gym_wrappers
from stable_baselines3.common import atari_wrappers
from stable_baselines3.common.monitor import Monitor

from sb3_trpo_ext.common.user_warnings import warn_at_user_call
from sb3_trpo_ext.vine.snapshot.base import _ClassAdapter, _copy_value, _set_array


class VineWorkerWrapper(gym.Wrapper):
    """
    Deprecated, no longer needed: VineTRPO runs branches on any ``SubprocVecEnv``. A pass-through wrapper that warns
    (``DeprecationWarning``), so that code written for 0.1.0, ``make_vec_env(..., vec_env_cls=SubprocVecEnv,
    wrapper_class=VineWorkerWrapper)``, still works; it will be removed in a later release.

    :param env: the env, returned unchanged by every call
    """

    def __init__(self, env: gym.Env) -> None:
        warn_at_user_call(
            "VineWorkerWrapper is deprecated and does nothing: VineTRPO runs its branches on any SubprocVecEnv. Remove "
            "wrapper_class=VineWorkerWrapper; the wrapper will be removed in a later release.",
            DeprecationWarning,
        )
        super().__init__(env)


class _StatelessWrapperAdapter(_ClassAdapter):
    """Wrappers that keep no state between steps (configuration only)."""

    name = "stateless"
    exact = True
    classes: tuple[type, ...] = (
        gym_wrappers.PassiveEnvChecker,
        gym_wrappers.ClipAction,
        gym_wrappers.RescaleAction,
        gym_wrappers.TransformAction,
        gym_wrappers.TransformObservation,
        gym_wrappers.TransformReward,
        gym_wrappers.ClipReward,
        gym_wrappers.FlattenObservation,
        gym_wrappers.GrayscaleObservation,
        gym_wrappers.ResizeObservation,
        gym_wrappers.ReshapeObservation,
        gym_wrappers.RescaleObservation,
        gym_wrappers.DtypeObservation,
        gym_wrappers.FilterObservation,
        atari_wrappers.AtariWrapper,
        atari_wrappers.WarpFrame,
        atari_wrappers.ClipRewardEnv,
        atari_wrappers.FireResetEnv,
        atari_wrappers.NoopResetEnv,  # its RNG is the unwrapped env's np_random
        VineWorkerWrapper,
    )

    def capture(self, env_layer: gym.Env) -> None:
        return None

    def restore(self, env_layer: gym.Env, state: None) -> None:
        pass


class _AttributesAdapter(_ClassAdapter):
    """Wrappers whose state is a few attributes (copied on capture and on restore; absent ones stay absent)."""

    attributes: tuple[str, ...] = ()

    def capture(self, env_layer: gym.Env) -> dict[str, Any]:
        layer_dict = vars(env_layer)
        return {key: _copy_value(layer_dict[key]) for key in self.attributes if key in layer_dict}

    def restore(self, env_layer: gym.Env, state: dict[str, Any]) -> None:
        layer_dict = vars(env_layer)
        for key in self.attributes:
            if key in state:
                layer_dict[key] = _copy_value(state[key])
            else:
                layer_dict.pop(key, None)


class _MonitorAdapter(_ClassAdapter):
    """SB3 Monitor: the episode in progress only, never the finished-episode statistics."""

    name = "sb3_monitor"
    classes = (Monitor,)

    def capture(self, env_layer: Monitor) -> tuple[list[float], bool, dict[str, Any]]:
        return list(env_layer.rewards), env_layer.needs_reset, dict(env_layer.current_reset_info)

    def restore(self, env_layer: Monitor, state: tuple[list[float], bool, dict[str, Any]]) -> None:
        rewards, env_layer.needs_reset, reset_info = state
        env_layer.rewards = list(rewards)
        env_layer.current_reset_info = dict(reset_info)


class _RecordEpisodeStatisticsAdapter(_AttributesAdapter):
    """gymnasium RecordEpisodeStatistics: the episode in progress only, never the queues nor the episode count."""

    name = "record_episode_statistics"
    classes = (gym_wrappers.RecordEpisodeStatistics,)
    attributes = ("episode_returns", "episode_lengths", "episode_start_time")


class _TimeLimitAdapter(_AttributesAdapter):
    name = "time_limit"
    classes = (gym_wrappers.TimeLimit,)
    attributes = ("_elapsed_steps",)


class _OrderEnforcingAdapter(_AttributesAdapter):
    name = "order_enforcing"
    classes = (gym_wrappers.OrderEnforcing,)
    attributes = ("_has_reset",)


class _EpisodicLifeAdapter(_AttributesAdapter):
    name = "sb3_episodic_life"
    classes = (atari_wrappers.EpisodicLifeEnv,)
    attributes = ("lives", "was_real_done")


class _StickyActionAdapter(_AttributesAdapter):
    """SB3 StickyActionEnv: the repeated action (its RNG is the unwrapped env's np_random)."""

    name = "sb3_sticky_action"
    classes = (atari_wrappers.StickyActionEnv,)
    attributes = ("_sticky_action",)


class _MaxAndSkipAdapter(_ClassAdapter):
    """SB3 MaxAndSkipEnv: the two-frame max-pooling buffer (stale slots matter when an episode ends mid-skip)."""

    name = "sb3_max_and_skip"
    classes = (atari_wrappers.MaxAndSkipEnv,)

    def capture(self, env_layer: atari_wrappers.MaxAndSkipEnv) -> np.ndarray:
        return env_layer._obs_buffer.copy()

    def restore(self, env_layer: atari_wrappers.MaxAndSkipEnv, state: np.ndarray) -> None:
        _set_array(env_layer._obs_buffer, state)


class _FrameStackObservationAdapter(_ClassAdapter):
    """gymnasium FrameStackObservation: the frame queue (and the padding frame, which is an observation for
    ``padding_type="reset"``)."""

    name = "frame_stack_observation"
    classes = (gym_wrappers.FrameStackObservation,)

    def capture(self, env_layer: gym_wrappers.FrameStackObservation) -> tuple[list[Any], Any]:
        return [_copy_value(frame) for frame in env_layer.obs_queue], _copy_value(env_layer.padding_value)

    def restore(self, env_layer: gym_wrappers.FrameStackObservation, state: tuple[list[Any], Any]) -> None:
        frames, padding = state
        env_layer.obs_queue = deque((_copy_value(frame) for frame in frames), maxlen=env_layer.obs_queue.maxlen)
        env_layer.padding_value = _copy_value(padding)


class _AtariPreprocessingAdapter(_ClassAdapter):
    """gymnasium AtariPreprocessing: the frame buffers, lives and game-over flag (noop RNG: the env's np_random)."""

    name = "atari_preprocessing"
    classes = (gym_wrappers.AtariPreprocessing,)

    def capture(self, env_layer: gym_wrappers.AtariPreprocessing) -> tuple[list[np.ndarray], int, bool]:
        return [buffer.copy() for buffer in env_layer.obs_buffer], env_layer.lives, env_layer.game_over

    def restore(self, env_layer: gym_wrappers.AtariPreprocessing, state: tuple[list[np.ndarray], int, bool]) -> None:
        buffers, env_layer.lives, env_layer.game_over = state
        for target, value in zip(env_layer.obs_buffer, buffers, strict=True):
            _set_array(target, value)
