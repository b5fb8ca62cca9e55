"""The built-in snapshot adapters: simulators (unwrapped envs: MuJoCo, ALE (Atari), classic control), then gymnasium and
SB3 wrappers (TimeLimit, OrderEnforcing, Monitor, RecordEpisodeStatistics, the SB3 Atari wrappers, frame stacking,
Atari preprocessing and the stateless wrappers, :class:`VineWorkerWrapper` among them)."""

from __future__ import annotations

import math
import sys
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import wrappers as gym_wrappers
from gymnasium.envs.classic_control import (
    AcrobotEnv,
    CartPoleEnv,
    Continuous_MountainCarEnv,
    MountainCarEnv,
    PendulumEnv,
)
from stable_baselines3.common import atari_wrappers
from stable_baselines3.common.monitor import Monitor

from sb3_trpo_ext.common.user_warnings import warn_at_user_call
from sb3_trpo_ext.vine.snapshot.base import SnapshotError, _ClassAdapter, _copy_value, _set_array, capture_is_live

# ------------------------------------------------------------------ simulators


def _capture_rng(env: gym.Env) -> tuple[Mapping[str, Any], Any]:
    """The env's ``np_random`` state (creating the generator if the env never made one) and its seed."""
    return env.np_random.bit_generator.state, getattr(env, "_np_random_seed", None)


def _restore_rng(env: gym.Env, saved: tuple[Mapping[str, Any], Any]) -> None:
    state, seed = saved
    generator = env.np_random
    if type(generator.bit_generator).__name__ == state["bit_generator"]:
        generator.bit_generator.state = state
    else:  # the generator was replaced by one of another kind
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = state
        env.np_random = np.random.Generator(bit_generator)
    if "_np_random_seed" in vars(env):
        env._np_random_seed = seed  # type: ignore[attr-defined]


class MujocoSnapshotAdapter:
    """
    gymnasium MuJoCo envs: integration state, the derived quantities envs read between steps, and ``np_random``.

    :param forward: run ``mj_forward`` after ``mj_setState`` so that every derived array (contacts included) matches
        the restored state, before the saved derived arrays are written back
    """

    name = "mujoco"
    # float64 derived arrays an env may read between steps; all are recomputed by the next mj_step
    DERIVED_FIELDS = (
        "xpos",
        "xquat",
        "xmat",
        "xipos",
        "ximat",
        "xanchor",
        "xaxis",
        "geom_xpos",
        "geom_xmat",
        "site_xpos",
        "site_xmat",
        "cam_xpos",
        "cam_xmat",
        "light_xpos",
        "light_xdir",
        "subtree_com",
        "cdof",
        "cinert",
        "ten_length",
        "ten_velocity",
        "actuator_length",
        "actuator_velocity",
        "actuator_force",
        "cvel",
        "cdof_dot",
        "qfrc_bias",
        "qfrc_passive",
        "qfrc_actuator",
        "qfrc_smooth",
        "qacc_smooth",
        "qfrc_constraint",
        "qfrc_inverse",
        "qacc",
        "cacc",
        "cfrc_int",
        "cfrc_ext",
        "subtree_linvel",
        "subtree_angmom",
        "sensordata",
        "energy",
    )

    def __init__(self, forward: bool = True) -> None:
        self.forward = forward
        # per env: (its MjData, integration-state size, flat views of the derived arrays, their slices in the snapshot)
        self._layouts: weakref.WeakKeyDictionary[Any, tuple[Any, int, list[np.ndarray], list[slice]]] = (
            weakref.WeakKeyDictionary()
        )

    def matches(self, env_layer: Any) -> bool:
        module = sys.modules.get("gymnasium.envs.mujoco.mujoco_env")
        return module is not None and isinstance(env_layer, module.MujocoEnv)

    def _layout(self, env_layer: Any) -> tuple[Any, int, list[np.ndarray], list[slice]]:
        """The views into MjData, made once per env (getting an MjData attribute builds a new array each time)."""
        import mujoco

        layout = self._layouts.get(env_layer)
        if layout is None or layout[0] is not env_layer.data:
            model, data = env_layer.model, env_layer.data
            views = []
            for field in self.DERIVED_FIELDS:
                array = getattr(data, field, None)
                if isinstance(array, np.ndarray) and array.dtype == np.float64 and array.size:
                    views.append(array.reshape(-1))
            size = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION)
            ends = np.cumsum([0] + [view.size for view in views]).tolist()
            layout = (data, size, views, [slice(start, end) for start, end in zip(ends[:-1], ends[1:], strict=True)])
            self._layouts[env_layer] = layout
        return layout

    def capture(self, env_layer: Any) -> tuple[np.ndarray, np.ndarray, tuple[Mapping[str, Any], Any]]:
        import mujoco

        data, size, views, _ = self._layout(env_layer)
        integration = np.empty(size)
        mujoco.mj_getState(env_layer.model, data, integration, mujoco.mjtState.mjSTATE_INTEGRATION)
        derived = np.concatenate(views) if views else np.empty(0)
        return integration, derived, _capture_rng(env_layer)

    def restore(self, env_layer: Any, state: tuple[np.ndarray, np.ndarray, tuple[Mapping[str, Any], Any]]) -> None:
        import mujoco

        integration, derived, rng = state
        data, size, views, slices = self._layout(env_layer)
        if integration.size != size or derived.size != (slices[-1].stop if views else 0):
            raise SnapshotError("the snapshot was taken on a different MuJoCo model (its state sizes differ).")
        mujoco.mj_setState(env_layer.model, data, integration, mujoco.mjtState.mjSTATE_INTEGRATION)
        if self.forward:
            mujoco.mj_forward(env_layer.model, data)
        for view, part in zip(views, slices, strict=True):
            view[:] = derived[part]
        _restore_rng(env_layer, rng)


class AtariSnapshotAdapter:
    """
    ale-py ``AtariEnv``: the emulator state with its RNG (``cloneState(include_rng=True)``) and ``np_random``.

    ALE's sticky actions (``repeat_action_probability > 0``, the v5 default) repeat, at each frame with that
    probability, the action *executed at the previous frame*; ALE keeps that action outside ``ALEState``, so
    ``restoreState`` leaves whatever ran last before the restore. To make restores exact, the adapter then
    *canonicalizes* it, on capture and on restore: it acts NOOP for ``sticky_priming_frames`` frames (each frame
    replaces the remembered action unless that frame is sticky) and restores the state again (emulator and RNG).
    So after ``capture`` the env remembers NOOP as its last action (as after a reset): a capture changes which action a
    sticky first frame repeats, nothing else; ``capture(env, live=False)`` skips this (the env will be restored before
    its next step anyway). The priming costs emulator frames (about 2.5 v5 steps per capture or restore at 0.25);
    with ``repeat_action_probability=0`` there is none: for speed, put sticky actions in a Python wrapper instead
    (e.g. ``AtariWrapper(env, action_repeat_probability=0.25)``), whose state is captured exactly and for free.

    :param sticky_priming_frames: frames of priming when sticky actions are on; ``None``: as many as needed for a
        failure probability ``repeat_action_probability ** frames`` below 1e-6 (10 for 0.25, at most 64); ``0``:
        no priming (faster, but a restore may then repeat a stale action on its first frames)
    """

    name = "ale"

    def __init__(self, sticky_priming_frames: int | None = None) -> None:
        self.sticky_priming_frames = sticky_priming_frames
        self._frames: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def matches(self, env_layer: Any) -> bool:
        module = sys.modules.get("ale_py.env")
        return module is not None and isinstance(env_layer, module.AtariEnv)

    def _priming_frames(self, env_layer: Any) -> int:
        frames = self._frames.get(env_layer)
        if frames is None:
            probability = float(env_layer.ale.getFloat("repeat_action_probability"))
            if probability <= 0.0:
                frames = 0
            elif self.sticky_priming_frames is not None:
                frames = self.sticky_priming_frames
            else:
                frames = 64 if probability >= 1.0 else min(64, math.ceil(math.log(1e-6) / math.log(probability)))
            self._frames[env_layer] = frames
        return frames

    def _canonicalize(self, env_layer: Any, ale_state: Any) -> None:
        frames = self._priming_frames(env_layer)
        if frames:
            import ale_py

            ale = env_layer.ale
            for _ in range(frames):
                ale.act(ale_py.Action.NOOP)
            ale.restoreState(ale_state)

    def capture(self, env_layer: Any) -> tuple[Any, tuple[Mapping[str, Any], Any]]:
        ale_state = env_layer.ale.cloneState(include_rng=True)
        if capture_is_live():
            self._canonicalize(env_layer, ale_state)
        return ale_state, _capture_rng(env_layer)

    def restore(self, env_layer: Any, state: tuple[Any, tuple[Mapping[str, Any], Any]]) -> None:
        ale_state, rng = state
        env_layer.ale.restoreState(ale_state)
        self._canonicalize(env_layer, ale_state)
        _restore_rng(env_layer, rng)


class _ClassicControlAdapter(_ClassAdapter):
    """A classic-control env: its state attributes and ``np_random``."""

    def __init__(self, name: str, cls: type, attributes: tuple[str, ...]) -> None:
        self.name = name
        self.classes = (cls,)
        self.attributes = attributes

    def capture(self, env_layer: gym.Env) -> tuple[tuple[Any, ...], tuple[Mapping[str, Any], Any]]:
        layer_dict = vars(env_layer)
        return tuple(_copy_value(layer_dict.get(key)) for key in self.attributes), _capture_rng(env_layer)

    def restore(self, env_layer: gym.Env, state: tuple[tuple[Any, ...], tuple[Mapping[str, Any], Any]]) -> None:
        values, rng = state
        layer_dict = vars(env_layer)
        for key, value in zip(self.attributes, values, strict=True):
            layer_dict[key] = _copy_value(value)
        _restore_rng(env_layer, rng)


_CLASSIC_CONTROL_ADAPTERS: tuple[_ClassicControlAdapter, ...] = (
    _ClassicControlAdapter("cartpole", CartPoleEnv, ("state", "steps_beyond_terminated")),
    _ClassicControlAdapter("pendulum", PendulumEnv, ("state", "last_u")),
    _ClassicControlAdapter("acrobot", AcrobotEnv, ("state",)),
    _ClassicControlAdapter("mountain_car", MountainCarEnv, ("state",)),
    _ClassicControlAdapter("mountain_car_continuous", Continuous_MountainCarEnv, ("state",)),
)


# ------------------------------------------------------------------ wrappers


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
