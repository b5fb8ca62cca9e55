"""The fallback adapters: a deep copy of the ``__dict__`` of a wrapper or an unwrapped env no other adapter matches."""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import gymnasium as gym

from sb3_trpo_ext.vine.snapshot.base import SnapshotError, _layer_name

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
    """
    Whether a ``__dict__`` entry is state (not configuration: functions, spaces, classes, pygame objects, nor an
    object whose class sets ``is_simulator_state = False``, such as the vine's branch worker).
    """
    if isinstance(value, _NOT_STATE_TYPES) or getattr(type(value), "is_simulator_state", True) is False:
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


class _GenericWrapperAdapter:
    """Any other wrapper: a deep copy of its own ``__dict__`` (minus the wrapped env, spaces, spec and functions)."""

    name = "generic_wrapper"

    def matches(self, env_layer: Any) -> bool:
        return isinstance(env_layer, gym.Wrapper)

    def capture(self, env_layer: gym.Wrapper) -> dict[str, Any]:
        return _deepcopy_state(env_layer, _WRAPPER_CONFIG_KEYS)

    def restore(self, env_layer: gym.Wrapper, state: dict[str, Any]) -> None:
        _restore_deepcopied(env_layer, state, _WRAPPER_CONFIG_KEYS)


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
