"""
:class:`RayVecEnv`: an SB3 ``VecEnv`` whose environments live in Ray actors, spread over the nodes of a Ray cluster.

Design
------
Each actor (:class:`~sb3_trpo_ext.distributed.actors.EnvGroup`) holds ``envs_per_actor`` environments and steps them
in a loop inside one remote call, so one vectorised step costs one round trip per actor, all actors in parallel.
Several envs per actor, not one, because a Ray round trip (submit, schedule, serialise, object store, deserialise)
costs about 1.5 ms while a MuJoCo env spends about 0.1 ms simulating one step: with one env per actor the network
and the scheduler would dominate; with eight the simulation and the transfer are of the same order, and the actors of
several nodes work at the same time.

Each env is built on its actor, from a cloudpickled builder (an env id for ``gymnasium.make``, wrapped in SB3's
``Monitor`` as ``make_vec_env`` does, or a picklable env function), so nothing but the builder and the step data
crosses the wire. The actors are placed with a placement group (``SPREAD`` by default: over as many nodes as
possible). Everything else copies SB3's ``DummyVecEnv``: the same buffers (``obs_space_info``), the same auto-reset
with ``terminal_observation`` and ``TimeLimit.truncated`` in the infos, the same use of ``seed()`` / ``set_options()``
at the next ``reset()``, so that a ``RayVecEnv`` gives the same trajectories as a ``DummyVecEnv`` of the same envs.

Faults: every wait for the actors has a timeout (``step_timeout_s``); a dead actor, a removed node or a timeout
raises :class:`~sb3_trpo_ext.distributed.cluster.EnvWorkerLost`, which names the envs, the actor and the node, and
says how to save the model and resume. An exception inside ``collect_rollouts`` changes no parameter of an on-policy
model, so the model is exactly as it was after its last completed update.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import ray
from ray.util.placement_group import remove_placement_group
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from sb3_trpo_ext.distributed.actors import EnvGroup, EnvSource, StepResult, build_env
from sb3_trpo_ext.distributed.cluster import (
    LOST_ERRORS,
    ActorPlace,
    EnvWorkerLost,
    ensure_ray,
    find_lost,
    reserve,
    start_actor,
    wait_started,
)

EnvFns = EnvSource | Sequence[Callable[[], gym.Env]]


def env_builders(
    env_fns_or_id: EnvFns, n_envs: int | None, env_kwargs: dict[str, Any] | None, seed: int | None, monitor: bool | None
) -> list[bytes]:
    """
    One cloudpickled zero-argument builder per env.

    :param env_fns_or_id: an env id, one env function (called as ``fn(**env_kwargs)`` for every env), or a list of
        zero-argument env functions (one per env, as ``DummyVecEnv`` takes)
    :param n_envs: the number of envs (for a list: None or its length)
    :param env_kwargs: keyword arguments of the env (not with a list)
    :param seed: seeds each env's action space with ``seed + rank`` (as ``make_vec_env``)
    :param monitor: wrap in SB3's ``Monitor``; None: yes for an id or one function (``make_vec_env``), no for a list
    :return: the pickled builders
    :raises ValueError: for inconsistent arguments
    :raises TypeError: when a builder cannot be pickled
    """
    if isinstance(env_fns_or_id, str) or callable(env_fns_or_id):
        if n_envs is None or n_envs < 1:
            raise ValueError(f"n_envs={n_envs}: give the number of envs (>= 1) with an env id or one env function")
        sources: list[EnvSource] = [env_fns_or_id] * n_envs
        kwargs, wrap = dict(env_kwargs or {}), True if monitor is None else monitor
    else:
        sources = list(env_fns_or_id)
        if not sources or (n_envs is not None and n_envs != len(sources)):
            raise ValueError(f"n_envs={n_envs} but {len(sources)} env functions were given: pass n_envs=None")
        if env_kwargs:
            raise ValueError("env_kwargs goes with an env id or one env function, not a list: bind them in the functions")
        kwargs, wrap = {}, bool(monitor)
    payloads = []
    for rank, source in enumerate(sources):
        try:
            payloads.append(cloudpickle.dumps(partial(build_env, source, rank, kwargs, seed, wrap)))
        except Exception as error:
            raise TypeError(
                f"Env {rank}'s builder cannot be pickled ({type(error).__name__}: {error}): the envs are built on the "
                f"Ray actors. Pass an env id, or a function that builds the env (gymnasium.make inside it, or "
                f"functools.partial(gymnasium.make, id)), not an env object or a closure over one."
            ) from error
    return payloads


def envs_per_actor_for(n_envs: int, n_actors: int) -> str:
    """:return: the ``envs_per_actor`` with which ``n_envs`` envs need at most ``n_actors`` actors, as advice"""
    per_actor = -(-n_envs // n_actors)
    actors = -(-n_envs // per_actor)
    return f"envs_per_actor={per_actor} or more ({actors} actor{'' if actors == 1 else 's'})"


class RayVecEnv(VecEnv):
    """
    A vectorised env whose envs live in Ray actors, ``envs_per_actor`` per actor, spread over the cluster's nodes.

    :param env_fns_or_id: an env id (``gymnasium.make(id, **env_kwargs)`` in a ``Monitor``), one env function (called
        as ``fn(**env_kwargs)`` for every env, in a ``Monitor``) or a list of zero-argument env functions (one per env,
        no ``Monitor`` unless ``monitor=True``, like ``DummyVecEnv``); functions must be picklable with cloudpickle
    :param n_envs: the number of envs (None with a list of functions)
    :param envs_per_actor: envs per actor (the last actor may hold fewer)
    :param ray_address: the Ray cluster to join when Ray is not initialised yet (None: start a local instance)
    :param scheduling: the placement-group strategy of the actors: ``"spread"``, ``"strict_spread"``, ``"pack"``,
        ``"strict_pack"`` or None (no placement group)
    :param env_kwargs: keyword arguments of the envs
    :param seed: as ``make_vec_env``: action spaces seeded with ``seed + rank``, envs seeded at the first ``reset()``
    :param monitor: wrap each env in SB3's ``Monitor`` (default: see ``env_fns_or_id``)
    :param num_cpus_per_actor: CPUs Ray reserves for each actor
    :param step_timeout_s: how long ``step_wait``, ``reset`` and the other calls wait for the actors
    :param startup_timeout_s: how long to wait for the resources (when other work holds them) and for the envs to be
        built
    :param ray_init_kwargs: further ``ray.init`` arguments when this env initialises Ray
    :raises RuntimeError: at once when the cluster's nodes cannot hold the actors (what they need and what the cluster
        has), or when the resources or the envs are not ready within ``startup_timeout_s``
    :raises ~sb3_trpo_ext.distributed.RayAuthenticationError: when the cluster at ``ray_address`` refuses this
        process's token (it presents the one Ray finds: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
        ``~/.ray/auth_token``)
    """

    def __init__(
        self,
        env_fns_or_id: EnvFns,
        n_envs: int | None = None,
        envs_per_actor: int = 8,
        ray_address: str | None = None,
        scheduling: str | None = "spread",
        env_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        monitor: bool | None = None,
        num_cpus_per_actor: float = 1.0,
        step_timeout_s: float = 300.0,
        startup_timeout_s: float = 300.0,
        ray_init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if envs_per_actor < 1:
            raise ValueError(f"envs_per_actor={envs_per_actor} must be >= 1")
        payloads = env_builders(env_fns_or_id, n_envs, env_kwargs, seed, monitor)
        self.step_timeout_s, self.closed, self.waiting = step_timeout_s, False, False
        self._lost: EnvWorkerLost | None = None
        self._pending: list[ray.ObjectRef] = []
        self.measure_bytes = False
        """When True, ``step_wait`` adds the pickled size of the actions and results to :attr:`timing`."""
        self.timing: dict[str, float] = dict(steps=0, round_trip_s=0.0, env_s=0.0, bytes_sent=0, bytes_received=0)
        """Totals over the steps: wall time of step_async + step_wait, the slowest actor's env time, bytes."""
        self._step_start = 0.0
        ensure_ray(ray_address, ray_init_kwargs)
        bounds = [(start, min(start + envs_per_actor, len(payloads))) for start in range(0, len(payloads), envs_per_actor)]
        owner = f"RayVecEnv(n_envs={len(payloads)}, envs_per_actor={envs_per_actor})"
        fewer_actors = partial(envs_per_actor_for, len(payloads))
        self.placement_group = reserve(len(bounds), num_cpus_per_actor, scheduling, startup_timeout_s, owner, fewer_actors)
        self.actors: list[Any] = []
        try:
            observation_space, action_space = self._start_actors(payloads, bounds, num_cpus_per_actor, startup_timeout_s)
            super().__init__(len(payloads), observation_space, action_space)
        except BaseException:
            self.close()
            raise
        self.keys, shapes, dtypes = obs_space_info(observation_space)
        self.buf_obs = OrderedDict([(k, np.zeros((self.num_envs, *tuple(shapes[k])), dtype=dtypes[k])) for k in self.keys])
        self.buf_dones = np.zeros((self.num_envs,), dtype=bool)
        self.buf_rews = np.zeros((self.num_envs,), dtype=np.float32)
        if seed is not None:
            self.seed(seed)

    def _start_actors(
        self, payloads: list[bytes], bounds: list[tuple[int, int]], num_cpus: float, timeout_s: float
    ) -> tuple[gym.Space, gym.Space]:
        """Create the actors, build their envs, and learn where they run; :return: the observation and action spaces"""
        for index, (start, stop) in enumerate(bounds):  # one by one: close() stops those started if one fails
            self.actors.append(start_actor(EnvGroup, (payloads[start:stop],), index, num_cpus, self.placement_group))
        descriptions = wait_started(self.actors, f"the {len(self.actors)} env actors", num_cpus, timeout_s)
        self.places = [
            ActorPlace.of(index, start, stop, actor, info)
            for index, ((start, stop), actor, info) in enumerate(zip(bounds, self.actors, descriptions, strict=True))
        ]
        for info in descriptions[1:]:
            if info["observation_space"] != descriptions[0]["observation_space"]:
                first, other = descriptions[0]["observation_space"], info["observation_space"]
                raise ValueError(f"The envs' observation spaces differ ({first} and {other}): a VecEnv needs one space")
        return descriptions[0]["observation_space"], descriptions[0]["action_space"]

    # ------------------------------------------------------------------ talking to the actors

    def _gather(self, refs: list[ray.ObjectRef], operation: str, places: list[ActorPlace] | None = None) -> list[Any]:
        """
        Wait for one result per actor.

        :param refs: the pending results
        :param operation: what is being done (for the error)
        :param places: the actors of ``refs`` (default: all actors, in order)
        :return: the results
        :raises EnvWorkerLost: when an actor is gone or does not answer within ``step_timeout_s``
        """
        try:
            return ray.get(refs, timeout=self.step_timeout_s)
        except LOST_ERRORS as error:
            places = self.places if places is None else places
            lost = [places[position] for position in find_lost(refs, error)]
            self._lost = EnvWorkerLost(operation, lost, error)
            raise self._lost from error

    def _check_usable(self, operation: str) -> None:
        if self.closed:
            raise RuntimeError(f"RayVecEnv.{operation}() after close(): build a new RayVecEnv")
        if self._lost is not None:
            raise EnvWorkerLost(operation, self._lost.places, self._lost.cause)

    def _per_actor(
        self, operation: str, indices: VecEnvIndices, name: str | None, args: tuple = (), kwargs: dict | None = None
    ) -> list[Any]:
        """Apply ``EnvGroup.call`` to the envs ``indices``; :return: one result per index, in the order of ``indices``"""
        self._check_usable(operation)
        wanted = list(self._get_indices(indices))
        by_actor: dict[int, list[tuple[int, int]]] = {}
        for position, index in enumerate(wanted):
            place = self._place_of(index)
            by_actor.setdefault(place.index, []).append((position, index - place.start))
        actor_indices = list(by_actor)
        refs = [
            self.actors[a].call.remote(operation, [local for _, local in by_actor[a]], name, args, kwargs or {})
            for a in actor_indices
        ]
        replies = self._gather(refs, operation, [self.places[a] for a in actor_indices])
        results: list[Any] = [None] * len(wanted)
        for actor_index, reply in zip(actor_indices, replies, strict=True):
            for (position, _), value in zip(by_actor[actor_index], reply, strict=True):
                results[position] = value
        return results

    def _place_of(self, index: int) -> ActorPlace:
        if not 0 <= index < self.num_envs:
            raise IndexError(f"env index {index} out of range for {self.num_envs} envs")
        return next(place for place in self.places if place.start <= index < place.stop)

    # ------------------------------------------------------------------ the VecEnv API

    def step_async(self, actions: np.ndarray) -> None:
        self._check_usable("step_async")
        self._step_start = time.perf_counter()
        self._pending = [
            actor.step.remote(actions[p.start : p.stop]) for actor, p in zip(self.actors, self.places, strict=True)
        ]
        if self.measure_bytes:
            sent = sum(len(pickle.dumps(actions[p.start : p.stop], protocol=5)) for p in self.places)
            self.timing["bytes_sent"] += sent
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        self._check_usable("step_wait")
        refs, self._pending, self.waiting = self._pending, [], False
        results: list[StepResult] = self._gather(refs, "step_wait")
        infos: list[dict[str, Any]] = []
        for place, result in zip(self.places, results, strict=True):
            self._store_obs(place.start, place.stop, result.observations)
            self.buf_rews[place.start : place.stop] = result.rewards
            self.buf_dones[place.start : place.stop] = result.dones
            infos.extend(_writable(info) for info in result.infos)
            for local, reset_info in result.reset_infos.items():
                self.reset_infos[place.start + local] = _writable(reset_info)
        self._count_step(results)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), infos

    def _count_step(self, results: list[StepResult]) -> None:
        self.timing["steps"] += 1
        self.timing["round_trip_s"] += time.perf_counter() - self._step_start
        self.timing["env_s"] += max(result.env_seconds for result in results)
        if self.measure_bytes:
            self.timing["bytes_received"] += sum(len(pickle.dumps(result, protocol=5)) for result in results)

    def reset(self) -> VecEnvObs:
        self._check_usable("reset")
        self._pending, self.waiting = [], False
        refs = [
            actor.reset.remote(self._seeds[p.start : p.stop], self._options[p.start : p.stop])
            for actor, p in zip(self.actors, self.places, strict=True)
        ]
        for place, (observations, reset_infos) in zip(self.places, self._gather(refs, "reset"), strict=True):
            self._store_obs(place.start, place.stop, observations)
            self.reset_infos[place.start : place.stop] = [_writable(info) for info in reset_infos]
        self._reset_seeds()
        self._reset_options()
        return self._obs_from_buf()

    def _store_obs(self, start: int, stop: int, observations: dict[Any, np.ndarray]) -> None:
        for key in self.keys:
            self.buf_obs[key][start:stop] = observations[key]

    def _obs_from_buf(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, OrderedDict((key, value.copy()) for key, value in self.buf_obs.items()))

    def close(self) -> None:
        """Close the envs, kill the actors and remove the placement group (a second call does nothing)."""
        if self.closed:
            return
        self.closed = True
        if not ray.is_initialized():
            return
        if self.actors:  # let the envs close cleanly, but do not wait for lost actors
            ray.wait([actor.close.remote() for actor in self.actors], num_returns=len(self.actors), timeout=5.0)
        for actor in self.actors:
            ray.kill(actor)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but this method assumes it is `rgb_array` to obtain images.",
                stacklevel=2,
            )
            return [None for _ in range(self.num_envs)]
        return self._per_actor("render", None, None)

    def has_attr(self, attr_name: str) -> bool:
        return all(self._per_actor("has_attr", None, attr_name))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._per_actor("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._per_actor("set_attr", indices, attr_name, (value,))

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return self._per_actor("env_method", indices, method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return self._per_actor("is_wrapped", indices, None, (wrapper_class,))


def _writable(value: Any) -> Any:
    """Copies of the read-only arrays Ray hands out (object-store views), inside dicts, lists and tuples."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, dict):
        copy = value.copy()
        for key, item in value.items():
            copy[key] = _writable(item)
        return copy
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(_writable(item) for item in value)
    return value
