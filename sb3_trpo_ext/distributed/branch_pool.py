"""
:class:`RayBranchPool`: the vine's branch rollouts on Ray actors, sized independently of the training env.

Design
------
Each actor (:class:`~sb3_trpo_ext.distributed.branch_actor.BranchActor`) builds one env from a cloudpickled builder
and keeps ``branch_envs_per_worker`` clones of it, like a ``SubprocVecEnv`` worker does; the training env's
snapshots restore into the clones, so the actors' env must be the training env's kind with the same wrapper chain
(checked when the model is built). A wave of branches costs one message per actor: the policy's weights, the VecEnv
wrappers' transforms and the wave's snapshots go through the object store once (``ray.put``, the reference passed to
every actor, each node fetching it once), the per-actor part (which snapshots, first actions, noise rows) with the
call. The waves are built by :class:`~sb3_trpo_ext.vine.branch_runner.BranchRunner`'s own code, with the actors as
its workers, so the Q-values are the bits a ``SubprocVecEnv`` of ``n_actors`` workers gives.

Faults: every wait has a timeout (``wave_timeout_s``). A wave is stateless given its message, so an actor that dies
(or whose node goes) during a wave is replaced by a new actor in the same placement-group bundle and its share of the
wave is sent again; learning goes on with the same result. The re-runs are counted (``rollout/branch_retries`` in
the model's logger); after ``max_retries`` in one wave :class:`BranchWorkerLost` says what to do.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group

from sb3_trpo_ext.distributed.actors import EnvSource, build_env
from sb3_trpo_ext.distributed.branch_actor import BranchActor, SharedWave, WavePart
from sb3_trpo_ext.distributed.cluster import (
    LOST_ERRORS,
    ActorPlace,
    EnvWorkerLost,
    ensure_ray,
    reserve,
    start_actor,
    wait_started,
)
from sb3_trpo_ext.vine.snapshot import SnapshotError


def describe_actor(place: ActorPlace) -> str:
    """:return: e.g. ``branch actor 1 (actor id ..., pid 123) on node 127.0.0.1 (node id ...)``"""
    return (
        f"branch actor {place.index} (actor id {place.actor_id}, pid {place.pid}) "
        f"on node {place.node_ip} (node id {place.node_id})"
    )


class BranchWorkerLost(EnvWorkerLost):
    """
    Actors of a :class:`RayBranchPool` were lost (died, their node went, or no answer in time) more often in one wave
    than ``max_retries`` allows, or a replacement actor could not be started.

    :param operation: what the pool was doing (``run_wave``, ``start``)
    :param places: the actors that were lost (their ``index`` is the actor's index in the pool)
    :param cause: the error Ray raised
    """

    def _lost_places(self) -> str:
        return "; ".join(describe_actor(place) for place in self.places)

    def _message(self) -> str:
        return (
            f"{self._what_happened('RayBranchPool lost branch actors')}"
            f"\nThe model is still at its last completed update (the branch phase changes no parameter): "
            f"save it now with model.save(path). The pool replaces lost actors at its next wave, so "
            f"model.learn(total_timesteps, reset_num_timesteps=False) may simply go on; or resume later with "
            f"VineTRPO.load(path, env=env) (the saved pool starts new actors). If the actors are only slow, raise "
            f"RayBranchPool(wave_timeout_s=...); if the cluster is short of CPUs, lower n_actors or num_cpus_per_actor."
        )

    @property
    def actor_indices(self) -> list[int]:
        """:return: the indices of the lost actors in the pool"""
        return [place.index for place in self.places]


class RayBranchPool:
    """
    Ray actors that run the vine's branch rollouts: pass one to ``VineTRPO(..., branch_pool=RayBranchPool(...))``.

    Each actor keeps the model's ``branch_envs_per_worker`` clones of its env, so a wave holds
    ``n_actors * branch_envs_per_worker`` branches. The actors start with the model (or at ``start()``) and stay up
    until ``close()`` (or the end of the Ray session); a saved model keeps the pool's settings, not its actors.

    :param env: what each actor builds: an env id (``gymnasium.make(env, **env_kwargs)``) or a picklable function
        called as ``env(**env_kwargs)``; it must give the training env's envs (same env, same wrapper chain: the
        training env's snapshots restore into it)
    :param n_actors: the number of actors (None: one per CPU the cluster has free when the pool starts, at least one)
    :param env_kwargs: keyword arguments of the env
    :param monitor: wrap the env in SB3's ``Monitor``, as ``make_vec_env`` wraps the training envs (False for a
        function that builds the whole chain itself)
    :param ray_address: the Ray cluster to join when Ray is not initialised yet (None: start a local instance)
    :param scheduling: the placement-group strategy of the actors: ``"spread"``, ``"strict_spread"``, ``"pack"``,
        ``"strict_pack"`` or None (no placement group)
    :param num_cpus_per_actor: CPUs Ray reserves for each actor
    :param wave_timeout_s: how long to wait for the next actor to answer within a wave before counting the actors
        still busy as lost
    :param max_retries: how many shares of one wave may be re-run after lost actors before :class:`BranchWorkerLost`
    :param startup_timeout_s: how long to wait for the resources (when other work holds them) and for the actors'
        envs to be built
    :param ray_init_kwargs: further ``ray.init`` arguments when this pool initialises Ray
    """

    def __init__(
        self,
        env: EnvSource,
        n_actors: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        monitor: bool = True,
        ray_address: str | None = None,
        scheduling: str | None = "spread",
        num_cpus_per_actor: float = 1.0,
        wave_timeout_s: float = 300.0,
        max_retries: int = 3,
        startup_timeout_s: float = 300.0,
        ray_init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if n_actors is not None and n_actors < 1:
            raise ValueError(f"n_actors={n_actors} must be >= 1 (or None: one actor per free CPU of the cluster)")
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries} must be >= 0")
        self.settings: dict[str, Any] = dict(
            env=env, n_actors=n_actors, env_kwargs=dict(env_kwargs or {}), monitor=monitor, ray_address=ray_address,
            scheduling=scheduling, num_cpus_per_actor=num_cpus_per_actor, wave_timeout_s=wave_timeout_s,
            max_retries=max_retries, startup_timeout_s=startup_timeout_s, ray_init_kwargs=ray_init_kwargs,
        )  # fmt: skip
        """The constructor's arguments (what a saved model keeps)."""
        source = partial(gym.make, env) if isinstance(env, str) else env  # no render mode: the training env's kind
        try:
            self.payload = cloudpickle.dumps(partial(build_env, source, 0, dict(env_kwargs or {}), None, monitor))
        except Exception as error:
            raise TypeError(
                f"The branch env builder cannot be pickled ({type(error).__name__}: {error}): the envs are built on "
                f"the Ray actors. Pass an env id or a function that builds the env, not an env object."
            ) from error
        self.actors: list[Any] = []
        """The actors' handles (empty until started)."""
        self.places: list[ActorPlace] = []
        """Where each actor runs (for a replaced actor: where its replacement runs)."""
        self.chain: list[tuple[str, str]] = []
        """The wrapper chain of the actors' env: ``(layer class, adapter)``, outermost first."""
        self.placement_group: PlacementGroup | None = None
        self.retries = 0
        """Shares of waves re-run after a lost actor, since the pool was made."""
        self.measure_bytes = False
        """When True, each wave adds the pickled sizes of its messages to :attr:`timing`."""
        self.timing: dict[str, float] = dict(
            waves=0, wave_s=0.0, actor_s=0.0, bytes_shared=0, bytes_policy=0, bytes_parts=0, bytes_replies=0
        )
        """Totals over the waves: wall time, the slowest actor's compute time, and (with measure_bytes) the pickled
        sizes of the shared objects (of which the policy), the per-actor parts and the replies."""

    # ------------------------------------------------------------------ life cycle

    @property
    def started(self) -> bool:
        """Whether the actors are up."""
        return bool(self.actors)

    @property
    def n_actors(self) -> int:
        """The number of actors (known once started when ``n_actors=None``)."""
        if self.started:
            return len(self.actors)
        if self.settings["n_actors"] is None:
            raise RuntimeError("RayBranchPool(n_actors=None) knows its size once started: call start() first")
        return int(self.settings["n_actors"])

    def start(self) -> RayBranchPool:
        """
        Start or join Ray, reserve the actors' CPUs and build their envs (does nothing when started).

        :return: this pool
        :raises RuntimeError: at once when the cluster's nodes cannot hold the actors (what they need and what the
            cluster has), or when the resources or the envs are not ready within ``startup_timeout_s``
        :raises ~sb3_trpo_ext.distributed.RayAuthenticationError: when the cluster at ``ray_address`` refuses this
            process's token
        """
        if self.started:
            return self
        settings = self.settings
        ensure_ray(settings["ray_address"], settings["ray_init_kwargs"])
        n_actors = settings["n_actors"]
        if n_actors is None:
            n_actors = max(1, int(ray.available_resources().get("CPU", 0) // settings["num_cpus_per_actor"]))
        timeout = settings["startup_timeout_s"]
        owner = f"RayBranchPool(n_actors={settings['n_actors']})"
        fewer_actors = "n_actors={} or fewer".format
        self.placement_group = reserve(
            n_actors, settings["num_cpus_per_actor"], settings["scheduling"], timeout, owner, fewer_actors
        )
        try:
            self.actors = [self._new_actor(index) for index in range(n_actors)]
            self.places = [self._describe(index, self.actors[index]) for index in range(n_actors)]
        except BaseException:
            self.close()
            raise
        return self

    def _new_actor(self, index: int) -> Any:
        return start_actor(BranchActor, (self.payload,), index, self.settings["num_cpus_per_actor"], self.placement_group)

    def _describe(self, index: int, actor: Any) -> ActorPlace:
        """Wait for a new actor's env to be built; :return: where it runs"""
        settings = self.settings
        (info,) = wait_started([actor], f"branch actor {index}", settings["num_cpus_per_actor"], settings["startup_timeout_s"])
        self.chain = info["chain"]
        return ActorPlace.of(index, index, index + 1, actor, info)

    def close(self) -> None:
        """Kill the actors and remove the placement group (the pool can be started again)."""
        if ray.is_initialized():
            for actor in self.actors:
                ray.kill(actor)
            if self.placement_group is not None:
                remove_placement_group(self.placement_group)
        self.actors, self.places, self.chain, self.placement_group = [], [], [], None

    def __enter__(self) -> RayBranchPool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}  # a saved model keeps the settings; a loaded pool starts new actors

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["settings"])  # type: ignore[misc]

    def __repr__(self) -> str:
        size = self.settings["n_actors"] if not self.started else len(self.actors)
        return f"RayBranchPool(env={self.settings['env']!r}, n_actors={size}, started={self.started})"

    # ------------------------------------------------------------------ checks

    def branch_runner(self, venv: Any, config: Any, rng: np.random.Generator, record: Any) -> Any:
        """
        The vine's runner of the branch phase on this pool (what ``VineTRPO(branch_pool=pool)`` calls, see
        ``sb3_trpo_ext.vine.branch_runner.BranchExecutorSource``).

        :param venv: the training environment
        :param config: the branch settings
        :param rng: the random generator of the branch phase
        :param record: logs ``rollout/branch_retries`` after each branch phase
        :return: a :class:`~sb3_trpo_ext.distributed.vine_runner.RayBranchRunner` on this pool
        """
        from sb3_trpo_ext.distributed.vine_runner import RayBranchRunner

        return RayBranchRunner(venv, config, rng, self, record)

    def check(self) -> None:
        """:raises SnapshotError: when an actor's env cannot be snapshotted (naming the actor and the fix)"""
        self.start()
        replies = ray.get([actor.check.remote() for actor in self.actors], timeout=self.settings["startup_timeout_s"])
        for place, (ok, message) in zip(self.places, replies, strict=True):
            if not ok:
                raise SnapshotError(f"VineTRPO {describe_actor(place)}: {message}")

    def check_chain(self, chain: list[tuple[str, str]]) -> None:
        """
        :param chain: the training env's wrapper chain (``(layer class, adapter)``, outermost first)
        :raises SnapshotError: when the actors' env has another chain, so that the training env's snapshots would
            not restore there
        """
        if [tuple(layer) for layer in chain] == [tuple(layer) for layer in self.chain]:
            return
        ours, theirs = " > ".join(layer for layer, _ in self.chain), " > ".join(layer for layer, _ in chain)
        patched = "" if "Patched" not in theirs + ours else (
            " A Patched... layer comes from a module that replaced a gymnasium wrapper where it was imported (rl_zoo3 "
            "patches TimeLimit when imported): import that module in the env function given to the pool too."
        )  # fmt: skip
        raise SnapshotError(
            f"The RayBranchPool's env ({ours}) is not the training env's kind ({theirs}), so the training env's "
            f"snapshots cannot be restored on the actors. Build both from the same env id or function: "
            f"RayBranchPool(env=..., env_kwargs=..., monitor=...) as the training env's envs are built (monitor=True "
            f"matches make_vec_env; a function that applies the same wrappers, with monitor=False, matches any "
            f"chain).{patched}"
        )

    # ------------------------------------------------------------------ waves

    def _submit(self, index: int, shared: ray.ObjectRef, part: WavePart) -> ray.ObjectRef:
        """Send actor ``index`` its share of a wave; :return: the pending reply"""
        return self.actors[index].run_wave.remote(shared, part)

    def run_wave(self, shared: SharedWave, parts: list[WavePart | None]) -> list[Any]:
        """
        Run one wave: ``shared`` through the object store once, each actor its part; lost actors are replaced and
        their part sent again.

        :param shared: the wave's shared part
        :param parts: one part per actor (None: no branch for that actor)
        :return: per actor, its worker's reply (``(True, (q_values, steps))`` or ``(False, message)``; None where
            the part was None)
        :raises BranchWorkerLost: after more than ``max_retries`` re-runs in this wave
        """
        self.start()
        start = time.perf_counter()
        shared_ref = ray.put(shared)
        replies: list[Any] = [None] * len(parts)
        seconds = [0.0] * len(parts)
        pending = {self._submit(i, shared_ref, part): i for i, part in enumerate(parts) if part is not None}
        retries = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.settings["wave_timeout_s"])
            timed_out = not ready
            lost: list[tuple[int, BaseException]] = []
            for ref in list(pending) if timed_out else ready:
                index = pending.pop(ref)
                try:
                    replies[index], seconds[index] = ray.get(ref, timeout=0 if timed_out else self.settings["wave_timeout_s"])
                except LOST_ERRORS as error:
                    lost.append((index, error))
            for index, cause in lost:
                retries += 1
                self.retries += 1
                self._replace(index, cause, retries)
                pending[self._submit(index, shared_ref, parts[index])] = index  # type: ignore[arg-type]
        self._count_wave(start, seconds, shared, parts, replies)
        return replies

    def _replace(self, index: int, cause: BaseException, retries: int) -> None:
        """
        Replace lost actor ``index`` by a new one in the same bundle; then raise when the wave has used up its
        retries (the pool stays whole for the next wave).
        """
        place = self.places[index]
        ray.kill(self.actors[index])  # a timed-out actor may still be running
        self.actors[index] = self._new_actor(index)
        try:
            self.places[index] = self._describe(index, self.actors[index])
        except RuntimeError as error:
            raise BranchWorkerLost("run_wave (replacing a lost actor)", [place], error) from cause
        if retries > self.settings["max_retries"]:
            raise BranchWorkerLost("run_wave", [place], cause) from cause

    def _count_wave(
        self, start: float, seconds: list[float], shared: SharedWave, parts: list[WavePart | None], replies: list[Any]
    ) -> None:
        self.timing["waves"] += 1
        self.timing["wave_s"] += time.perf_counter() - start
        self.timing["actor_s"] += max(seconds)
        if self.measure_bytes:
            self.timing["bytes_shared"] += len(cloudpickle.dumps(shared))
            self.timing["bytes_policy"] += len(cloudpickle.dumps(shared.policy))
            self.timing["bytes_parts"] += sum(len(cloudpickle.dumps(part)) for part in parts if part is not None)
            self.timing["bytes_replies"] += sum(len(cloudpickle.dumps(reply)) for reply in replies if reply is not None)
