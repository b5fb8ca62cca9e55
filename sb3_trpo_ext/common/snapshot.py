"""
Snapshots of a simulator's full state, for the vine method (paper, Section 5.2), which resets the simulator to
arbitrary saved states.

A :class:`Snapshot` holds the state of every layer of a (wrapped) gymnasium env: ``env``, ``env.env``, ... down to
``env.unwrapped``. Each layer's state is taken by the first *adapter* that matches it; adapters registered by the
user come first, then the built-in ones, then a generic deep-copy fallback. Snapshots are plain picklable data, so
they cross process boundaries (``SubprocVecEnv`` workers) and can be restored into another instance of the same env
(same wrapper chain, same model).

Public API::

    snapshot = capture(env)                  # the whole wrapper chain (live=False: restored before any step)
    restore(env, snapshot)                   # any number of times; the snapshot is never modified
    with monitor_paused(env):                # branch rollouts that leave no trace in Monitor statistics
        restore(env, snapshot)
        env.step(action)
    check_snapshottable(env)                 # raises SnapshotError (a ValueError) with the fix
    snapshot = capture_vec(venv, index)      # one env of a DummyVecEnv / SubprocVecEnv, with VecEnv wrapper state
    restore_vec(venv, index, snapshot)

Built-in adapters (what is captured):

- MuJoCo (``gymnasium.envs.mujoco.MujocoEnv``, v4 and v5): MuJoCo's *integration state*
  (``mj_getState(..., mjSTATE_INTEGRATION)``: qpos, qvel, act, warm-start accelerations, time, controls, applied
  forces, mocap, userdata), which makes every later ``mj_step`` bit-identical, plus the derived quantities that
  environments read between steps (body/site/geom poses, ``cinert``, ``cvel``, ``cfrc_ext``, ``qfrc_actuator``,
  sensors, ...). Gymnasium envs read these *after* ``mj_step``, when they still describe the state at the start of
  the last substep; recomputing them with ``mj_forward`` would give different (fresher) numbers, so Ant's and
  Humanoid's observations would not be reproduced bit for bit. ``restore`` therefore runs ``mj_forward`` (so that
  contacts and every other derived array match the restored state) and then writes the saved derived arrays back.
  Plus the env's ``np_random`` (used by ``reset``).
- ALE (``ale_py.env.AtariEnv``): ``ale.cloneState(include_rng=True)`` (the emulator and the sticky-action RNG;
  ``ALEState`` pickles) and the env's ``np_random`` (reset seeding, random frame skips). ALE's sticky actions also
  remember the last executed action, which ``ALEState`` does not hold: with ``repeat_action_probability > 0`` (the
  v5 default) capture and restore reset it to NOOP by priming a few emulator frames, so that restores are exact
  (see :class:`AtariSnapshotAdapter`; with ``repeat_action_probability=0`` nothing of the kind is needed).
- Classic control: CartPole (``state``, ``steps_beyond_terminated``), Pendulum (``state``, ``last_u``), Acrobot,
  MountainCar and MountainCarContinuous (``state``), each with ``np_random``.
- Wrappers: ``TimeLimit`` (``_elapsed_steps``), ``OrderEnforcing`` (``_has_reset``), SB3's ``EpisodicLifeEnv``
  (``lives``, ``was_real_done``), ``MaxAndSkipEnv`` (max-pooling buffer), ``StickyActionEnv`` (last action; its
  RNG and ``NoopResetEnv``'s are the unwrapped env's ``np_random``), gymnasium's ``FrameStackObservation`` (frame
  queue) and ``AtariPreprocessing`` (frame buffers, lives), and the stateless wrappers (``PassiveEnvChecker``,
  ``AtariWrapper``, ``WarpFrame``, ``ClipRewardEnv``, ``FireResetEnv``, ``NoopResetEnv``, the ``Transform*``,
  ``Clip*``, ``Rescale*`` and shape/dtype observation wrappers), which are matched by exact class.
- SB3 ``Monitor`` and gymnasium ``RecordEpisodeStatistics``: only the *current episode's accumulators*
  (Monitor: ``rewards``, ``needs_reset``, ``current_reset_info``; RecordEpisodeStatistics: ``episode_returns``,
  ``episode_lengths``, ``episode_start_time``). ``restore`` never touches the finished-episode statistics
  (Monitor's ``episode_returns``, ``episode_lengths``, ``episode_times``, ``total_steps``, its results file;
  RecordEpisodeStatistics' queues and ``episode_count``): a restore rewinds the episode in progress, not the
  history of finished ones.
- Fallbacks: any other wrapper, and an unwrapped env no adapter matches, are deep-copied (their ``__dict__`` minus
  spaces, spec, functions and render objects such as pygame screens or MuJoCo renderers; a restore also drops state
  attributes created after the capture). When that fails (a lock, a socket, a C handle in the state) a
  :class:`SnapshotError` names the layer and says how to fix it.

The stateful built-in adapters also match subclasses (``isinstance``): state that a subclass adds (e.g. a MuJoCo
env keeping per-episode counters in attributes) is not captured; register an adapter for such a class. ``restore``
does not return an observation (keep the one that came with the state) and does not redraw the render buffers.

Branch rollouts and Monitor: stepping a restored env through ``Monitor`` would record the branch's episodes (and
write them to the results file). Step branches inside :func:`monitor_paused`: while it is active, the ``step`` and
``reset`` of every ``Monitor`` / ``RecordEpisodeStatistics`` layer go straight to the wrapped env (no bookkeeping,
no ``info["episode"]``, no file write), and on exit their accumulators are put back as they were on entry. The
usual pattern is capture the trunk's state, run the branches paused, restore the trunk's state and go on.

VecEnvs: :func:`capture_vec` / :func:`restore_vec` snapshot one env of a ``DummyVecEnv`` (directly) or of a
``SubprocVecEnv`` (through ``env_method``; the worker's env must be wrapped, outermost, in :class:`SnapshotWrapper`,
e.g. ``make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=SnapshotWrapper)``). They also take
the per-env state of the VecEnv wrappers: ``VecFrameStack``'s stacked frames (also available alone through
:func:`capture_vec_frame_stack` / :func:`restore_vec_frame_stack`), ``VecNormalize``'s discounted-return
accumulator and ``VecMonitor``'s episode accumulators (again, never its finished-episode statistics).
``VecNormalize``'s running statistics are never captured nor restored: freeze them during branch rollouts
(``venv.training = False``, then set it back) so branches do not update them. :func:`monitor_paused_vec` pauses the
Monitors of the workers and any ``VecMonitor``.

Registering an adapter for your own env (or wrapper)::

    import numpy as np
    from sb3_trpo_ext.common.snapshot import register_snapshot_adapter

    class MyRobotAdapter:
        name = "my_robot"  # optional; recorded in snapshots and checked on restore

        def matches(self, env_layer) -> bool:
            return isinstance(env_layer, MyRobotEnv)

        def capture(self, env_layer):
            # return picklable data that does not alias the env's mutable state
            return env_layer.sim.get_state().copy(), env_layer.np_random.bit_generator.state

        def restore(self, env_layer, state) -> None:
            sim_state, rng_state = state
            env_layer.sim.set_state(sim_state.copy())  # copy: the same snapshot may be restored many times
            env_layer.np_random.bit_generator.state = rng_state

    register_snapshot_adapter(MyRobotAdapter())

User adapters are tried before the built-in ones, the most recently registered first. The configurable built-in
adapters are public, so that a configured instance can be registered the same way, e.g.
``register_snapshot_adapter(AtariSnapshotAdapter(sticky_priming_frames=0))`` or
``register_snapshot_adapter(MujocoSnapshotAdapter(forward=False))``. With ``SubprocVecEnv`` and
the ``spawn`` / ``forkserver`` start methods, register the adapter at import time of a module the workers import
(e.g. the module that defines the env), so that it is registered in the workers too.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import math
import pickle
import sys
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, runtime_checkable

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
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecExtractDictObs,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

__all__ = [
    "AtariSnapshotAdapter",
    "MujocoSnapshotAdapter",
    "LayerState",
    "Snapshot",
    "SnapshotAdapter",
    "SnapshotError",
    "SnapshotWrapper",
    "VecSnapshotAdapter",
    "capture",
    "capture_is_live",
    "capture_vec",
    "capture_vec_frame_stack",
    "check_snapshottable",
    "monitor_paused",
    "monitor_paused_vec",
    "register_snapshot_adapter",
    "register_vec_snapshot_adapter",
    "restore",
    "restore_vec",
    "restore_vec_frame_stack",
    "unregister_snapshot_adapter",
    "unregister_vec_snapshot_adapter",
]


def _register_hint(layer: str) -> str:
    return (
        f"To fix it, register an adapter for {layer} with sb3_trpo_ext.common.snapshot.register_snapshot_adapter("
        "adapter), where adapter has matches(env_layer) -> bool, capture(env_layer) -> picklable state and "
        "restore(env_layer, state) -> None (see the docstring of sb3_trpo_ext.common.snapshot for an example)."
    )


_LIVE_CAPTURE: contextvars.ContextVar[bool] = contextvars.ContextVar("sb3_trpo_ext_live_capture", default=True)


class SnapshotError(ValueError):
    """An env (or one layer of its wrapper chain) cannot be snapshotted or a snapshot cannot be restored into it."""


class LayerState(NamedTuple):
    """The saved state of one layer of the wrapper chain."""

    layer: str
    """Qualified class name of the layer (checked on restore)."""
    adapter: str
    """Name of the adapter that captured it (checked on restore)."""
    state: Any
    """What the adapter's ``capture`` returned."""


@dataclass(frozen=True, eq=False)
class Snapshot:
    """
    The state of a wrapped gymnasium env, outermost layer first; picklable.

    :param env_name: the env's id (or class name), for messages
    :param layers: one :class:`LayerState` per layer, from ``env`` down to ``env.unwrapped``
    :param vec_layers: per-env state of the VecEnv wrappers (outermost first) when taken by :func:`capture_vec`,
        ``None`` when taken by :func:`capture`
    """

    env_name: str
    layers: tuple[LayerState, ...]
    vec_layers: tuple[LayerState, ...] | None = None

    def __repr__(self) -> str:
        chain = " > ".join(f"{state.layer}[{state.adapter}]" for state in self.layers)
        vec = "" if self.vec_layers is None else f", vec_layers={[state.layer for state in self.vec_layers]}"
        return f"Snapshot({self.env_name}: {chain}{vec})"


@runtime_checkable
class SnapshotAdapter(Protocol):
    """What :func:`register_snapshot_adapter` expects (duck typing; subclassing is not needed)."""

    def matches(self, env_layer: gym.Env) -> bool:
        """
        :param env_layer: one layer of the wrapper chain (a wrapper or the unwrapped env)
        :return: whether this adapter handles it
        """
        ...

    def capture(self, env_layer: gym.Env) -> Any:
        """
        :param env_layer: a layer this adapter matches
        :return: its state: picklable, and not aliasing the layer's mutable state
        """
        ...

    def restore(self, env_layer: gym.Env, state: Any) -> None:
        """
        :param env_layer: a layer this adapter matches
        :param state: what :meth:`capture` returned (must not be modified: a snapshot can be restored many times)
        """
        ...


@runtime_checkable
class VecSnapshotAdapter(Protocol):
    """What :func:`register_vec_snapshot_adapter` expects: the per-env state of a ``VecEnvWrapper``."""

    def matches(self, vec_wrapper: VecEnvWrapper) -> bool:
        """
        :param vec_wrapper: one VecEnv wrapper
        :return: whether this adapter handles it
        """
        ...

    def capture(self, vec_wrapper: VecEnvWrapper, index: int) -> Any:
        """
        :param vec_wrapper: a wrapper this adapter matches
        :param index: env index
        :return: that env's state in the wrapper (picklable, not aliasing the wrapper's arrays)
        """
        ...

    def restore(self, vec_wrapper: VecEnvWrapper, index: int, state: Any) -> None:
        """
        :param vec_wrapper: a wrapper this adapter matches
        :param index: env index
        :param state: what :meth:`capture` returned (must not be modified)
        """
        ...


# ----------------------------------------------------------------------------------------------------------- helpers


def _adapter_name(adapter: Any) -> str:
    name = getattr(adapter, "name", None)
    return name if isinstance(name, str) and name else type(adapter).__qualname__


def _layer_name(layer: Any) -> str:
    return type(layer).__qualname__


def _env_name(env: gym.Env) -> str:
    unwrapped = getattr(env, "unwrapped", env)
    spec = getattr(env, "spec", None)
    cls = type(unwrapped).__name__
    if spec is not None and getattr(spec, "id", None):
        return f"{spec.id} ({cls})"
    return cls


def _layers(env: gym.Env) -> list[gym.Env]:
    """``[env, env.env, ..., env.unwrapped]``."""
    if not isinstance(env, gym.Env) and isinstance(env, VecEnv):
        raise TypeError("capture / restore take a single gymnasium env; use capture_vec / restore_vec for a VecEnv.")
    layers = [env]
    while isinstance(env, gym.Wrapper):
        env = env.env
        layers.append(env)
    return layers


def _copy_value(value: Any) -> Any:
    """A copy that does not alias mutable state (fast paths for the common types)."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


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


_WRAPPER_CONFIG_KEYS = frozenset(
    {
        "env",
        "_action_space",
        "_observation_space",
        "_metadata",
        "_cached_spec",
        "_reward_range",
        "spec",
        "_saved_kwargs",
        "_ezpickle_args",
        "_ezpickle_kwargs",
    }
)
_ENV_CONFIG_KEYS = frozenset(
    {
        "spec",
        "metadata",
        "render_mode",
        "action_space",
        "observation_space",
        "reward_range",
        "_ezpickle_args",
        "_ezpickle_kwargs",
        # render objects
        "screen",
        "surf",
        "clock",
        "isopen",
        "viewer",
        "_viewers",
        "window",
        "renderer",
        "mujoco_renderer",
    }
)
_NOT_STATE_TYPES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.ModuleType,
    type,
    functools.partial,
    gym.Space,
)


def _is_state(value: Any) -> bool:
    """Whether a ``__dict__`` entry is state (not configuration: functions, spaces, classes, pygame objects)."""
    if isinstance(value, _NOT_STATE_TYPES):
        return False
    return not type(value).__module__.startswith("pygame")


def _deepcopy_state(layer: Any, excluded: frozenset[str]) -> dict[str, Any]:
    state = {key: value for key, value in vars(layer).items() if key not in excluded and _is_state(value)}
    try:
        return copy.deepcopy(state)
    except Exception as exc:
        # find the offending attribute for the message
        for key, value in state.items():
            try:
                copy.deepcopy(value)
            except Exception:
                raise SnapshotError(
                    f"the state of {_layer_name(layer)} cannot be copied: attribute {key!r} holds a "
                    f"{type(value).__module__}.{type(value).__qualname__} ({exc})."
                ) from exc
        raise SnapshotError(f"the state of {_layer_name(layer)} cannot be copied ({exc}).") from exc


def _restore_deepcopied(layer: Any, state: dict[str, Any], excluded: frozenset[str]) -> None:
    layer_dict = vars(layer)
    # state attributes created after the capture did not exist then
    for key in [key for key, value in layer_dict.items() if key not in state and key not in excluded and _is_state(value)]:
        del layer_dict[key]
    layer_dict.update(copy.deepcopy(state))


def _set_array(target: np.ndarray, value: np.ndarray) -> None:
    np.copyto(target, value, casting="no")


# ---------------------------------------------------------------------------------------------- built-in adapters


class _ClassAdapter:
    """Base of the built-in adapters: matches instances of ``classes`` (exact class when ``exact``)."""

    name = "base"
    classes: tuple[type, ...] = ()
    exact = False

    def matches(self, env_layer: Any) -> bool:
        if self.exact:
            return type(env_layer) in self.classes
        return isinstance(env_layer, self.classes)


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


class _GenericWrapperAdapter:
    """Any other wrapper: a deep copy of its own ``__dict__`` (minus the wrapped env, spaces, spec and functions)."""

    name = "generic_wrapper"

    def matches(self, env_layer: Any) -> bool:
        return isinstance(env_layer, gym.Wrapper)

    def capture(self, env_layer: gym.Wrapper) -> dict[str, Any]:
        return _deepcopy_state(env_layer, _WRAPPER_CONFIG_KEYS)

    def restore(self, env_layer: gym.Wrapper, state: dict[str, Any]) -> None:
        _restore_deepcopied(env_layer, state, _WRAPPER_CONFIG_KEYS)


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


class _GenericEnvAdapter:
    """An unwrapped env no adapter matches: a deep copy of its ``__dict__`` (minus spaces, spec, render objects)."""

    name = "generic_env"

    def matches(self, env_layer: Any) -> bool:
        return not isinstance(env_layer, gym.Wrapper)

    def capture(self, env_layer: gym.Env) -> dict[str, Any]:
        if isinstance(env_layer, gym.Env):
            env_layer.np_random  # noqa: B018  (creates the generator now, so that it is part of the state)
        return _deepcopy_state(env_layer, _ENV_CONFIG_KEYS)

    def restore(self, env_layer: gym.Env, state: dict[str, Any]) -> None:
        _restore_deepcopied(env_layer, state, _ENV_CONFIG_KEYS)


_BUILTIN_ADAPTERS: list[Any] = [
    _StatelessWrapperAdapter(),
    _TimeLimitAdapter(),
    _OrderEnforcingAdapter(),
    _MonitorAdapter(),
    _RecordEpisodeStatisticsAdapter(),
    _EpisodicLifeAdapter(),
    _MaxAndSkipAdapter(),
    _StickyActionAdapter(),
    _FrameStackObservationAdapter(),
    _AtariPreprocessingAdapter(),
    _GenericWrapperAdapter(),
    MujocoSnapshotAdapter(),
    AtariSnapshotAdapter(),
    _ClassicControlAdapter("cartpole", CartPoleEnv, ("state", "steps_beyond_terminated")),
    _ClassicControlAdapter("pendulum", PendulumEnv, ("state", "last_u")),
    _ClassicControlAdapter("acrobot", AcrobotEnv, ("state",)),
    _ClassicControlAdapter("mountain_car", MountainCarEnv, ("state",)),
    _ClassicControlAdapter("mountain_car_continuous", Continuous_MountainCarEnv, ("state",)),
    _GenericEnvAdapter(),
]
_USER_ADAPTERS: list[Any] = []  # most recent first
_BUILTIN_BY_TYPE: dict[type, Any] = {}  # built-in matches depend on the class only


def _validate_adapter(adapter: Any, methods: tuple[str, ...]) -> Any:
    if isinstance(adapter, type):
        adapter = adapter()
    missing = [method for method in methods if not callable(getattr(adapter, method, None))]
    if missing:
        raise TypeError(f"A snapshot adapter needs the methods {', '.join(methods)}; {adapter!r} lacks {', '.join(missing)}.")
    return adapter


def register_snapshot_adapter(adapter: Any) -> Any:
    """
    Register an adapter for env layers the built-in ones do not handle (or handle differently). User adapters are
    tried before the built-in ones, the most recently registered first. Registering the same adapter again moves it
    to the front.

    :param adapter: an object (or a class, instantiated without arguments) with ``matches(env_layer) -> bool``,
        ``capture(env_layer) -> Any`` (picklable, not aliasing the env) and ``restore(env_layer, state) -> None``;
        an optional ``name`` attribute is recorded in snapshots (default: the class name)
    :return: the registered adapter instance (so that it can be unregistered)
    :raises TypeError: when a method is missing
    """
    adapter = _validate_adapter(adapter, ("matches", "capture", "restore"))
    unregister_snapshot_adapter(adapter)
    _USER_ADAPTERS.insert(0, adapter)
    return adapter


def unregister_snapshot_adapter(adapter: Any) -> None:
    """
    :param adapter: an adapter returned by :func:`register_snapshot_adapter` (nothing happens if it is not registered)
    """
    _USER_ADAPTERS[:] = [registered for registered in _USER_ADAPTERS if registered is not adapter]


def _find_adapter(layer: Any) -> Any:
    for adapter in _USER_ADAPTERS:
        if adapter.matches(layer):
            return adapter
    layer_type = type(layer)
    adapter = _BUILTIN_BY_TYPE.get(layer_type)
    if adapter is None:
        adapter = next(candidate for candidate in _BUILTIN_ADAPTERS if candidate.matches(layer))
        _BUILTIN_BY_TYPE[layer_type] = adapter
    return adapter


# ------------------------------------------------------------------------------------------------ capture / restore


def capture(env: gym.Env, live: bool = True) -> Snapshot:
    """
    Capture the state of every layer of ``env``'s wrapper chain.

    :param env: a (wrapped) gymnasium env
    :param live: whether ``env`` may go on being stepped from here without a restore (then it behaves exactly as
        a restore of the snapshot would). Pass ``False`` when the env is always restored before its next step
        (branch rollouts), so that adapters can skip the work that only keeps the live env consistent with the
        snapshot (ALE sticky-action priming, see :class:`AtariSnapshotAdapter`); adapters read it with
        :func:`capture_is_live`
    :return: a picklable snapshot
    :raises SnapshotError: when a layer's state cannot be captured (the message says how to fix it)
    """
    token = _LIVE_CAPTURE.set(live)
    try:
        states = []
        for layer in _layers(env):
            adapter = _find_adapter(layer)
            try:
                state = adapter.capture(layer)
            except Exception as exc:
                name = _layer_name(layer)
                detail = str(exc) if isinstance(exc, SnapshotError) else f"{name}: {type(exc).__name__}: {exc}"
                raise SnapshotError(f"Cannot snapshot {_env_name(env)}: {detail} {_register_hint(name)}") from exc
            states.append(LayerState(_layer_name(layer), _adapter_name(adapter), state))
    finally:
        _LIVE_CAPTURE.reset(token)
    return Snapshot(_env_name(env), tuple(states))


def capture_is_live() -> bool:
    """
    For adapters: the ``live`` argument of the :func:`capture` in progress (``True`` outside of one).

    :return: whether the env may go on being stepped without a restore after this capture
    """
    return _LIVE_CAPTURE.get()


def restore(env: gym.Env, snapshot: Snapshot) -> None:
    """
    Put ``env`` back in the state of ``snapshot`` (taken on this env or on another instance with the same wrapper
    chain). The snapshot is not modified and can be restored again. Monitor's finished-episode statistics are never
    touched (see the module docstring). The env's observation is not returned: keep it with the snapshot.

    :param env: a (wrapped) gymnasium env
    :param snapshot: from :func:`capture` (or :func:`capture_vec`)
    :raises SnapshotError: when the wrapper chain or an adapter differs from the one the snapshot was taken with
    """
    layers = _layers(env)
    if len(layers) != len(snapshot.layers) or any(
        _layer_name(layer) != saved.layer for layer, saved in zip(layers, snapshot.layers, strict=False)
    ):
        chain = " > ".join(_layer_name(layer) for layer in layers)
        saved_chain = " > ".join(saved.layer for saved in snapshot.layers)
        raise SnapshotError(
            f"Cannot restore a snapshot of {snapshot.env_name} into {_env_name(env)}: the wrapper chains differ "
            f"(snapshot: {saved_chain}; env: {chain})."
        )
    for layer, saved in zip(layers, snapshot.layers, strict=True):
        adapter = _find_adapter(layer)
        if _adapter_name(adapter) != saved.adapter:
            raise SnapshotError(
                f"Cannot restore a snapshot of {snapshot.env_name}: layer {saved.layer} was captured by adapter "
                f"{saved.adapter!r} but adapter {_adapter_name(adapter)!r} matches it here. Register the same adapters "
                "in every process (e.g. at import time of the module that defines the env)."
            )
        try:
            adapter.restore(layer, saved.state)
        except SnapshotError as exc:
            raise SnapshotError(f"Cannot restore a snapshot of {snapshot.env_name}: {saved.layer}: {exc}") from exc


def check_snapshottable(env: gym.Env | VecEnv) -> None:
    """
    Check that ``env`` can be snapshotted: capture, pickle, unpickle and restore its current state.

    :param env: a (wrapped) gymnasium env, or a VecEnv (every env is checked, see :func:`capture_vec`)
    :raises SnapshotError: naming the env and the layer, with how to fix it (register an adapter)
    """
    if isinstance(env, VecEnv):
        for index in range(env.num_envs):
            snapshot = capture_vec(env, index)
            restore_vec(env, index, _pickle_round_trip(snapshot, f"env {index} of {type(env).__name__}"))
        return
    snapshot = capture(env)
    restore(env, _pickle_round_trip(snapshot, _env_name(env)))


def _pickle_round_trip(snapshot: Snapshot, name: str) -> Snapshot:
    for saved in (*snapshot.layers, *(snapshot.vec_layers or ())):
        try:
            pickle.dumps(saved.state)
        except Exception as exc:
            raise SnapshotError(
                f"Cannot snapshot {name}: the state of {saved.layer} (adapter {saved.adapter!r}) does not pickle "
                f"({type(exc).__name__}: {exc}), so it cannot cross process boundaries. "
                f"{_register_hint(saved.layer)}"
            ) from exc
    return pickle.loads(pickle.dumps(snapshot))


# ------------------------------------------------------------------------------------------------------ Monitor pause


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


# ------------------------------------------------------------------------------------------------------- VecEnvs


class SnapshotWrapper(gym.Wrapper):
    """
    Gives a ``SubprocVecEnv`` worker's env the methods :func:`capture_vec`, :func:`restore_vec` and
    :func:`monitor_paused_vec` call through ``env_method``. It must be the outermost wrapper (the state of wrappers
    outside it could not be reached), which is what ``wrapper_class`` of ``make_vec_env`` gives::

        venv = make_vec_env("Hopper-v5", n_envs=4, vec_env_cls=SubprocVecEnv, wrapper_class=SnapshotWrapper)

    It changes nothing else. ``DummyVecEnv`` does not need it.

    :param env: the env to wrap
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._pause: ExitStack | None = None

    def get_snapshot(self, live: bool = True) -> Snapshot:
        """
        :param live: see :func:`capture`
        :return: the snapshot of this env (see :func:`capture`)
        """
        return capture(self, live)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """:param snapshot: a snapshot to restore (see :func:`restore`)"""
        restore(self, snapshot)

    def check_snapshottable(self) -> None:
        """:raises SnapshotError: see :func:`check_snapshottable`"""
        check_snapshottable(self)

    def snapshot_call(self, method: str, *args: Any) -> tuple[bool, Any]:
        """
        What :func:`capture_vec`, :func:`restore_vec` and :func:`monitor_paused_vec` call through ``env_method``: an
        exception is returned rather than raised, since it would end a ``SubprocVecEnv`` worker.

        :param method: ``"get_snapshot"``, ``"set_snapshot"``, ``"pause_monitors"`` or ``"resume_monitors"``
        :param args: its arguments
        :return: ``(True, result)``, or ``(False, message)`` when it raised
        """
        if method not in ("get_snapshot", "set_snapshot", "pause_monitors", "resume_monitors"):
            return False, f"unknown snapshot method {method!r}"
        try:
            return True, getattr(self, method)(*args)
        except Exception as exc:
            return False, str(exc) if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"

    def pause_monitors(self) -> None:
        """Enter :func:`monitor_paused` (until :meth:`resume_monitors`); does nothing when already paused."""
        if self._pause is None:
            stack = ExitStack()
            stack.enter_context(monitor_paused(self))
            self._pause = stack

    def resume_monitors(self) -> None:
        """Leave :func:`monitor_paused`; does nothing when not paused."""
        if self._pause is not None:
            stack, self._pause = self._pause, None
            stack.close()


_StatelessWrapperAdapter.classes = (*_StatelessWrapperAdapter.classes, SnapshotWrapper)


def _vec_chain(venv: VecEnv) -> tuple[list[VecEnvWrapper], VecEnv]:
    wrappers = []
    while isinstance(venv, VecEnvWrapper):
        wrappers.append(venv)
        venv = venv.venv
    return wrappers, venv


class _VecFrameStackAdapter(_ClassAdapter):
    """VecFrameStack: that env's stacked frames."""

    name = "vec_frame_stack"
    classes = (VecFrameStack,)

    def capture(self, vec_wrapper: VecFrameStack, index: int) -> np.ndarray | dict[str, np.ndarray]:
        stacked = vec_wrapper.stacked_obs
        if hasattr(stacked, "sub_stacked_observations"):
            return {key: sub.stacked_obs[index].copy() for key, sub in stacked.sub_stacked_observations.items()}
        return stacked.stacked_obs[index].copy()

    def restore(self, vec_wrapper: VecFrameStack, index: int, state: np.ndarray | dict[str, np.ndarray]) -> None:
        stacked = vec_wrapper.stacked_obs
        if isinstance(state, dict):
            for key, value in state.items():
                _set_array(stacked.sub_stacked_observations[key].stacked_obs[index], value)
        else:
            _set_array(stacked.stacked_obs[index], state)


class _VecNormalizeAdapter(_ClassAdapter):
    """VecNormalize: that env's discounted-return accumulator; never the running statistics."""

    name = "vec_normalize"
    classes = (VecNormalize,)

    def capture(self, vec_wrapper: VecNormalize, index: int) -> float:
        return float(vec_wrapper.returns[index])

    def restore(self, vec_wrapper: VecNormalize, index: int, state: float) -> None:
        vec_wrapper.returns[index] = state


class _VecMonitorAdapter(_ClassAdapter):
    """VecMonitor: that env's episode accumulators; never the episode count nor the results file."""

    name = "vec_monitor"
    classes = (VecMonitor,)

    def capture(self, vec_wrapper: VecMonitor, index: int) -> tuple[Any, Any]:
        return vec_wrapper.episode_returns[index].copy(), vec_wrapper.episode_lengths[index].copy()

    def restore(self, vec_wrapper: VecMonitor, index: int, state: tuple[Any, Any]) -> None:
        vec_wrapper.episode_returns[index], vec_wrapper.episode_lengths[index] = state


class _VecStatelessAdapter(_ClassAdapter):
    name = "vec_stateless"
    exact = True
    classes = (VecTransposeImage, VecExtractDictObs, VecCheckNan)

    def capture(self, vec_wrapper: VecEnvWrapper, index: int) -> None:
        return None

    def restore(self, vec_wrapper: VecEnvWrapper, index: int, state: None) -> None:
        pass


_BUILTIN_VEC_ADAPTERS: list[Any] = [
    _VecStatelessAdapter(),
    _VecFrameStackAdapter(),
    _VecNormalizeAdapter(),
    _VecMonitorAdapter(),
]
_USER_VEC_ADAPTERS: list[Any] = []


def register_vec_snapshot_adapter(adapter: Any) -> Any:
    """
    Register an adapter for the per-env state of a ``VecEnvWrapper`` the built-in ones do not handle (tried first,
    the most recently registered first).

    :param adapter: an object (or a class, instantiated without arguments) with ``matches(vec_wrapper) -> bool``,
        ``capture(vec_wrapper, index) -> Any`` and ``restore(vec_wrapper, index, state) -> None``
    :return: the registered adapter instance
    :raises TypeError: when a method is missing
    """
    adapter = _validate_adapter(adapter, ("matches", "capture", "restore"))
    unregister_vec_snapshot_adapter(adapter)
    _USER_VEC_ADAPTERS.insert(0, adapter)
    return adapter


def unregister_vec_snapshot_adapter(adapter: Any) -> None:
    """:param adapter: an adapter returned by :func:`register_vec_snapshot_adapter`"""
    _USER_VEC_ADAPTERS[:] = [registered for registered in _USER_VEC_ADAPTERS if registered is not adapter]


def _find_vec_adapter(vec_wrapper: VecEnvWrapper) -> Any:
    for adapter in (*_USER_VEC_ADAPTERS, *_BUILTIN_VEC_ADAPTERS):
        if adapter.matches(vec_wrapper):
            return adapter
    raise SnapshotError(
        f"The VecEnv wrapper {type(vec_wrapper).__name__} has no snapshot adapter, so its per-env state cannot be "
        "captured. If it keeps no per-env state, or to capture it, register an adapter with "
        "sb3_trpo_ext.common.snapshot.register_vec_snapshot_adapter(adapter) (matches(vec_wrapper) -> bool, "
        "capture(vec_wrapper, index) -> state, restore(vec_wrapper, index, state) -> None)."
    )


def _check_index(venv: VecEnv, index: int) -> None:
    if not 0 <= index < venv.num_envs:
        raise IndexError(f"env index {index} out of range for a VecEnv of {venv.num_envs} envs")


_CHECKED_WORKERS: weakref.WeakSet[VecEnv] = weakref.WeakSet()


def _check_worker_wrapper(base: VecEnv) -> None:
    """The worker's outermost env must be a SnapshotWrapper (checked once per VecEnv)."""
    if base in _CHECKED_WORKERS:
        return
    outermost = base.get_attr("__class__")
    bad = [i for i, cls in enumerate(outermost) if not (isinstance(cls, type) and issubclass(cls, SnapshotWrapper))]
    if bad:
        raise SnapshotError(
            f"Cannot snapshot the envs of a {type(base).__name__} unless each is wrapped (outermost) in "
            f"sb3_trpo_ext.common.snapshot.SnapshotWrapper; env {bad[0]} is a {outermost[bad[0]].__name__}. Build it with "
            "make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=SnapshotWrapper)."
        )
    _CHECKED_WORKERS.add(base)


def _worker_call(base: VecEnv, method: str, indices: list[int], *args: Any) -> list[Any]:
    """Call a :class:`SnapshotWrapper` method in the workers, raising their errors here."""
    _check_worker_wrapper(base)
    results = []
    for index, (ok, result) in zip(indices, base.env_method("snapshot_call", method, *args, indices=indices), strict=True):
        if not ok:
            raise SnapshotError(f"env {index} of the {type(base).__name__}: {result}")
        results.append(result)
    return results


def capture_vec(venv: VecEnv, index: int, live: bool = True) -> Snapshot:
    """
    Capture env ``index`` of a VecEnv: its gymnasium env (directly for ``DummyVecEnv``, in the worker through
    ``env_method`` otherwise, which needs :class:`SnapshotWrapper`) and its per-env state in the
    VecEnv wrappers (``VecFrameStack`` frames, ``VecNormalize`` return accumulator, ``VecMonitor`` accumulators).

    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :param live: see :func:`capture`
    :return: a picklable snapshot
    :raises SnapshotError: when the env or a VecEnv wrapper cannot be snapshotted
    """
    _check_index(venv, index)
    wrappers, base = _vec_chain(venv)
    vec_layers = tuple(
        LayerState(type(wrapper).__qualname__, _adapter_name(adapter), adapter.capture(wrapper, index))
        for wrapper in wrappers
        for adapter in (_find_vec_adapter(wrapper),)
    )
    if isinstance(base, DummyVecEnv):
        snapshot = capture(base.envs[index], live)
    else:
        snapshot = _worker_call(base, "get_snapshot", [index], live)[0]
    return replace(snapshot, vec_layers=vec_layers)


def restore_vec(venv: VecEnv, index: int, snapshot: Snapshot) -> None:
    """
    Restore ``snapshot`` into env ``index`` of a VecEnv (it may come from another index or another VecEnv with the
    same wrappers). The VecEnv wrappers' per-env state is restored when the snapshot has it (taken by
    :func:`capture_vec`); their running statistics (``VecNormalize``) and finished-episode statistics
    (``VecMonitor``) are never touched.

    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :param snapshot: from :func:`capture_vec` (or :func:`capture`, which leaves the VecEnv wrappers as they are)
    :raises SnapshotError: when the wrappers differ from those the snapshot was taken with
    """
    _check_index(venv, index)
    wrappers, base = _vec_chain(venv)
    if snapshot.vec_layers is not None:
        names = [type(wrapper).__qualname__ for wrapper in wrappers]
        if names != [saved.layer for saved in snapshot.vec_layers]:
            raise SnapshotError(
                f"Cannot restore a snapshot of {snapshot.env_name}: the VecEnv wrappers differ (snapshot: "
                f"{[saved.layer for saved in snapshot.vec_layers]}; VecEnv: {names})."
            )
    if isinstance(base, DummyVecEnv):
        restore(base.envs[index], snapshot)
    else:
        _worker_call(base, "set_snapshot", [index], snapshot)
    if snapshot.vec_layers is not None:
        for wrapper, saved in zip(wrappers, snapshot.vec_layers, strict=True):
            _find_vec_adapter(wrapper).restore(wrapper, index, saved.state)


def capture_vec_frame_stack(venv: VecEnv, index: int) -> list[np.ndarray | dict[str, np.ndarray]]:
    """
    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :return: a copy of that env's stacked frames in each ``VecFrameStack`` of the chain (outermost first)
    """
    _check_index(venv, index)
    adapter = _VecFrameStackAdapter()
    return [adapter.capture(wrapper, index) for wrapper in _vec_chain(venv)[0] if isinstance(wrapper, VecFrameStack)]


def restore_vec_frame_stack(venv: VecEnv, index: int, stacks: list[np.ndarray | dict[str, np.ndarray]]) -> None:
    """
    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :param stacks: from :func:`capture_vec_frame_stack`
    """
    _check_index(venv, index)
    frame_stacks = [wrapper for wrapper in _vec_chain(venv)[0] if isinstance(wrapper, VecFrameStack)]
    if len(frame_stacks) != len(stacks):
        raise SnapshotError(f"{len(stacks)} frame stacks saved but the VecEnv has {len(frame_stacks)} VecFrameStack.")
    adapter = _VecFrameStackAdapter()
    for wrapper, state in zip(frame_stacks, stacks, strict=True):
        adapter.restore(wrapper, index, state)


@contextmanager
def _vec_monitor_paused(vec_monitor: VecMonitor) -> Iterator[None]:
    saved = vec_monitor.episode_returns.copy(), vec_monitor.episode_lengths.copy()
    vec_monitor.step_wait = vec_monitor.venv.step_wait  # type: ignore[method-assign]
    vec_monitor.reset = vec_monitor.venv.reset  # type: ignore[method-assign]
    try:
        yield
    finally:
        del vec_monitor.step_wait, vec_monitor.reset
        vec_monitor.episode_returns, vec_monitor.episode_lengths = saved


@contextmanager
def monitor_paused_vec(venv: VecEnv, indices: list[int] | None = None) -> Iterator[None]:
    """
    :func:`monitor_paused` for the envs of a VecEnv (in the workers for ``SubprocVecEnv``, which needs
    :class:`SnapshotWrapper`), and for every ``VecMonitor`` of the chain (which records all envs, so it is paused
    for all of them, whatever ``indices``).

    :param venv: the VecEnv, possibly wrapped
    :param indices: the envs whose Monitors are paused (default: all)
    """
    wrappers, base = _vec_chain(venv)
    indices = list(range(base.num_envs)) if indices is None else list(indices)
    with ExitStack() as stack:
        for wrapper in wrappers:
            if isinstance(wrapper, VecMonitor):
                stack.enter_context(_vec_monitor_paused(wrapper))
        if isinstance(base, DummyVecEnv):
            for index in indices:
                stack.enter_context(monitor_paused(base.envs[index]))
        else:
            _worker_call(base, "pause_monitors", indices)
            stack.callback(_worker_call, base, "resume_monitors", indices)
        yield
