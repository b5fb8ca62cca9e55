"""The adapters in matching order (the user's, then the built-in ones), and capture / restore of an env."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.vine.snapshot.adapters import (
    _CLASSIC_CONTROL_ADAPTERS,
    AtariSnapshotAdapter,
    MujocoSnapshotAdapter,
    _AtariPreprocessingAdapter,
    _EpisodicLifeAdapter,
    _FrameStackObservationAdapter,
    _MaxAndSkipAdapter,
    _MonitorAdapter,
    _OrderEnforcingAdapter,
    _RecordEpisodeStatisticsAdapter,
    _StatelessWrapperAdapter,
    _StickyActionAdapter,
    _TimeLimitAdapter,
)
from sb3_trpo_ext.vine.snapshot.base import _LIVE_CAPTURE, LayerState, Snapshot, SnapshotError, _layer_name
from sb3_trpo_ext.vine.snapshot.fallback import _GenericEnvAdapter, _GenericWrapperAdapter

# ------------------------------------------------------------------------------------------------------- adapters

_BUILTIN_ADAPTERS: tuple[Any, ...] = (
    # wrappers: exact classes first, then the stateful ones (subclasses too), then the deep-copy fallback
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
    # unwrapped envs: the simulators, then the deep-copy fallback
    MujocoSnapshotAdapter(),
    AtariSnapshotAdapter(),
    *_CLASSIC_CONTROL_ADAPTERS,
    _GenericEnvAdapter(),
)
"""The built-in adapters, in matching order: tried after the user's, the first that matches a layer takes it."""

_USER_ADAPTERS: list[Any] = []  # most recent first
_BUILTIN_BY_TYPE: dict[type, Any] = {}  # built-in matches depend on the class only


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
    if isinstance(adapter, type):
        adapter = adapter()
    methods = ("matches", "capture", "restore")
    missing = [method for method in methods if not callable(getattr(adapter, method, None))]
    if missing:
        raise TypeError(f"A snapshot adapter needs the methods {', '.join(methods)}; {adapter!r} lacks {', '.join(missing)}.")
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


# ------------------------------------------------------------------------------------------------------- helpers


def _register_hint(layer: str) -> str:
    return (
        f"To fix it, register an adapter for {layer} with sb3_trpo_ext.vine.snapshot.register_snapshot_adapter("
        "adapter), where adapter has matches(env_layer) -> bool, capture(env_layer) -> picklable state and "
        "restore(env_layer, state) -> None (see the docstring of sb3_trpo_ext.vine.snapshot for an example)."
    )


def _adapter_name(adapter: Any) -> str:
    name = getattr(adapter, "name", None)
    return name if isinstance(name, str) and name else type(adapter).__qualname__


def _env_name(env: gym.Env) -> str:
    unwrapped = getattr(env, "unwrapped", env)
    spec = getattr(env, "spec", None)
    cls = type(unwrapped).__name__
    if spec is not None and getattr(spec, "id", None):
        return f"{spec.id} ({cls})"
    return cls


def wrapper_layers(env: gym.Env) -> list[gym.Env]:
    """``[env, env.env, ..., env.unwrapped]``."""
    if isinstance(env, VecEnv):
        raise TypeError("capture / restore take a single gymnasium env, not a VecEnv.")
    layers = [env]
    while isinstance(env, gym.Wrapper):
        env = env.env
        layers.append(env)
    return layers


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
        for layer in wrapper_layers(env):
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


def restore(env: gym.Env, snapshot: Snapshot) -> None:
    """
    Put ``env`` back in the state of ``snapshot`` (taken on this env or on another instance with the same wrapper
    chain). The snapshot is not modified and can be restored again. Monitor's finished-episode statistics are never
    touched (see the package docstring). The env's observation is not returned: keep it with the snapshot.

    :param env: a (wrapped) gymnasium env
    :param snapshot: from :func:`capture`
    :raises SnapshotError: when the wrapper chain or an adapter differs from the one the snapshot was taken with
    """
    layers = wrapper_layers(env)
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
