"""The snapshot types, the adapter protocols, the adapter registry, and capture / restore of a gymnasium env."""

from __future__ import annotations

import contextvars
import copy
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper


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


# -------------------------------------------------------------------------------------------------------- registry


_BUILTIN_ADAPTERS: list[Any] = []  # filled, in matching order, by sb3_trpo_ext.common.snapshot (__init__)
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
