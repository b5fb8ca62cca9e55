"""The snapshot types, the adapter protocol, and the helpers the adapters share."""

from __future__ import annotations

import contextvars
import copy
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

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
    """

    env_name: str
    layers: tuple[LayerState, ...]

    def __repr__(self) -> str:
        chain = " > ".join(f"{state.layer}[{state.adapter}]" for state in self.layers)
        return f"Snapshot({self.env_name}: {chain})"


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


def capture_is_live() -> bool:
    """
    For adapters: the ``live`` argument of the :func:`capture` in progress (``True`` outside of one).

    :return: whether the env may go on being stepped without a restore after this capture
    """
    return _LIVE_CAPTURE.get()


def _layer_name(layer: Any) -> str:
    return type(layer).__qualname__


def _copy_value(value: Any) -> Any:
    """A copy that does not alias mutable state (fast paths for the common types)."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


def _set_array(target: np.ndarray, value: np.ndarray) -> None:
    np.copyto(target, value, casting="no")


class _ClassAdapter:
    """Base of the built-in adapters: matches instances of ``classes`` (exact class when ``exact``)."""

    name = "base"
    classes: tuple[type, ...] = ()
    exact = False

    def matches(self, env_layer: Any) -> bool:
        if self.exact:
            return type(env_layer) in self.classes
        return isinstance(env_layer, self.classes)
