"""
The Ray side of :class:`~sb3_trpo_ext.distributed.RayVecEnv`: starting or joining Ray, placing the actors, and turning
a lost actor into an error that says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
import ray.exceptions
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

LOST_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
    ray.exceptions.GetTimeoutError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.LocalRayletDiedError,
)
"""What ``ray.get`` raises when an actor, its worker process or its node is gone (or did not answer in time)."""

STRATEGIES = {"spread": "SPREAD", "strict_spread": "STRICT_SPREAD", "pack": "PACK", "strict_pack": "STRICT_PACK"}


def ensure_ray(address: str | None, init_kwargs: dict[str, Any] | None = None) -> bool:
    """
    Start or join Ray unless it is already initialised (Ray's usage statistics are off unless the caller set
    ``RAY_USAGE_STATS_ENABLED``).

    :param address: the cluster to join (``ray.init(address=address)``); None starts a local instance without the
        dashboard and without the workers' logs on this terminal
    :param init_kwargs: further arguments of ``ray.init``
    :return: whether this call initialised Ray
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": False}
    if address is None:
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = address
    kwargs.update(init_kwargs or {})
    ray.init(**kwargs)
    return True


def reserve(n_actors: int, num_cpus: float, scheduling: str | None, timeout_s: float) -> PlacementGroup | None:
    """
    Reserve one bundle of ``num_cpus`` CPUs per actor in a placement group.

    :param n_actors: the number of actors
    :param num_cpus: CPUs per actor
    :param scheduling: ``"spread"`` (over as many nodes as possible), ``"strict_spread"`` (one node per actor),
        ``"pack"``, ``"strict_pack"``, or None (no placement group: Ray's default scheduling)
    :param timeout_s: how long to wait for the resources
    :return: the placement group, ready (None when ``scheduling`` is None)
    :raises ValueError: for an unknown ``scheduling``
    :raises RuntimeError: when the cluster cannot give the resources within ``timeout_s``
    """
    if scheduling is None:
        return None
    if scheduling not in STRATEGIES:
        raise ValueError(f"scheduling={scheduling!r} is not one of {sorted(STRATEGIES)} or None")
    group = placement_group([{"CPU": num_cpus}] * n_actors, strategy=STRATEGIES[scheduling])
    if group.wait(timeout_seconds=timeout_s):
        return group
    remove_placement_group(group)
    raise RuntimeError(
        f"Ray could not reserve {n_actors} actors x {num_cpus} CPU ({STRATEGIES[scheduling]}) within {timeout_s:.0f} s; "
        f"the cluster has {ray.cluster_resources().get('CPU', 0)} CPUs, {ray.available_resources().get('CPU', 0)} free, "
        f"on {len([n for n in ray.nodes() if n.get('Alive')])} nodes. Lower num_cpus_per_actor (fractions are fine), "
        f"raise envs_per_actor, close other RayVecEnvs, add nodes, or use scheduling='spread' instead of a strict one."
    )


def start_actor(actor_class: type, args: tuple[Any, ...], index: int, num_cpus: float, group: PlacementGroup | None) -> Any:
    """
    Start one actor (no restarts by Ray: a lost actor is replaced by our code, which knows what it held; one call at a
    time), in bundle ``index`` of the placement group if there is one.

    :param actor_class: the actor's class
    :param args: its constructor's arguments
    :param index: its index (and bundle)
    :param num_cpus: CPUs it reserves
    :param group: the placement group, or None
    :return: the actor handle
    """
    options: dict[str, Any] = dict(num_cpus=num_cpus, max_restarts=0, max_concurrency=1)
    if group is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, index)
    return ray.remote(actor_class).options(**options).remote(*args)


def wait_started(actors: list[Any], what: str, num_cpus: float, timeout_s: float) -> list[dict[str, Any]]:
    """
    Wait for new actors to build their envs.

    :param actors: the actor handles (each with a ``describe()`` method)
    :param what: what they are, for the error (``"the 4 env actors"``, ``"branch actor 2"``)
    :param num_cpus: CPUs per actor, for the error
    :param timeout_s: how long to wait
    :return: each actor's ``describe()`` reply
    :raises RuntimeError: when they do not start in time, or building an env failed
    """
    try:
        return ray.get([actor.describe.remote() for actor in actors], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as error:
        raise RuntimeError(
            f"{what[:1].upper()}{what[1:]} did not start within startup_timeout_s={timeout_s:.0f} s: the cluster may "
            f"lack CPUs for them (num_cpus_per_actor={num_cpus}) or the env is slow to build; raise the timeout."
        ) from error
    except ray.exceptions.RayActorError as error:
        raise RuntimeError(f"Building the envs on {what} failed (the cause is below): {error}") from error


@dataclass(frozen=True)
class ActorPlace:
    """Where one actor of a :class:`~sb3_trpo_ext.distributed.RayVecEnv` runs, and which envs it holds."""

    index: int
    """The actor's index in the vectorised env."""
    start: int
    """Its first env index."""
    stop: int
    """One past its last env index."""
    actor_id: str
    node_id: str
    node_ip: str
    pid: int

    @classmethod
    def of(cls, index: int, start: int, stop: int, actor: Any, info: dict[str, Any]) -> ActorPlace:
        """:return: the place of ``actor`` from its ``describe()`` reply ``info`` (``node_id``, ``node_ip``, ``pid``)"""
        return cls(index, start, stop, actor._actor_id.hex(), info["node_id"], info["node_ip"], info["pid"])

    def describe(self) -> str:
        """:return: e.g. ``envs 2-3 on actor 1 (actor id ..., pid 123) on node 127.0.0.1 (node id ...)``"""
        envs = f"env {self.start}" if self.stop - self.start == 1 else f"envs {self.start}-{self.stop - 1}"
        return (
            f"{envs} on actor {self.index} (actor id {self.actor_id}, pid {self.pid}) "
            f"on node {self.node_ip} (node id {self.node_id})"
        )


class EnvWorkerLost(RuntimeError):
    """
    An actor of a :class:`~sb3_trpo_ext.distributed.RayVecEnv` died, its node went away, or it did not answer in time.

    :param operation: what the VecEnv was doing (``step_wait``, ``reset``, ...)
    :param places: the actors that were lost
    :param cause: the error Ray raised
    """

    def __init__(self, operation: str, places: list[ActorPlace], cause: BaseException) -> None:
        self.operation = operation
        self.places = places
        self.env_indices = [index for place in places for index in range(place.start, place.stop)]
        self.cause = cause
        super().__init__(self._message())

    def _what_happened(self, lost: str) -> str:
        """:return: what was lost during which operation, and what Ray said (the first line, at most 300 characters)"""
        reason = (str(self.cause).strip().splitlines() or [""])[0][:300]
        return f"{lost} during {self.operation}: {self._lost_places()}. Ray said: {type(self.cause).__name__}: {reason}"

    def _lost_places(self) -> str:
        return "; ".join(place.describe() for place in self.places)

    def _message(self) -> str:
        return (
            f"{self._what_happened('RayVecEnv lost env workers')}"
            f"\nThe model is still at its last completed update (an interrupted rollout changes no parameter), "
            f"so save it now with model.save(path) (and a VecNormalize's statistics with vec_normalize.save(path)). "
            f"To resume: env = RayVecEnv(...) with the same arguments (its actors go to the nodes that remain), "
            f"model.set_env(env), then model.learn(total_timesteps, reset_num_timesteps=False). "
            f"This RayVecEnv cannot be used any more: close() it."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.operation, self.places, self.cause))


def find_lost(refs: list[ray.ObjectRef], error: BaseException) -> list[int]:
    """
    :param refs: one pending result per actor, the ones a failed ``ray.get`` waited for
    :param error: what ``ray.get`` raised
    :return: the positions in ``refs`` of the actors that failed (all of them when none can be told apart)
    """
    lost = []
    for position, ref in enumerate(refs):
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            if isinstance(error, ray.exceptions.GetTimeoutError):
                lost.append(position)
            continue
        try:
            ray.get(ref, timeout=0)
        except LOST_ERRORS:
            lost.append(position)
        except Exception:  # noqa: BLE001 - an env's own error is not a lost worker
            pass
    return lost or list(range(len(refs)))
