"""
The Ray side of :class:`~sb3_trpo_ext.distributed.RayVecEnv`: starting or joining Ray (with the cluster's
authentication token), placing the actors, and turning a lost actor into an error that says what to do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
AUTHENTICATION_ERRORS: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(ray.exceptions, "AuthenticationError", None),) if error is not None
)
"""What Ray raises when a cluster refuses this process's token (Ray 2.52 and later; nothing before)."""
JOIN_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, RuntimeError, *AUTHENTICATION_ERRORS)
"""What ``ray.init(address=...)`` raises when it cannot join, a refused token among the causes."""

DOCS_PAGE = "'Starting a cluster' in the Distributed (Ray) guide, docs/guide/distributed.md"


class RayAuthenticationError(ConnectionError):
    """
    A Ray cluster refused this process: its token authentication is on, and this process presented no token or
    another one. The message says where this process looked for the token and how to give it the cluster's.

    :param address: the cluster's address
    """

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(authentication_advice(address))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.address,))


def default_token_path() -> Path:
    """:return: the token file Ray reads when neither ``RAY_AUTH_TOKEN`` nor ``RAY_AUTH_TOKEN_PATH`` is set"""
    return Path.home() / ".ray" / "auth_token"


def token_source() -> str | None:
    """
    :return: where Ray takes this process's token from, in Ray's order (the ``RAY_AUTH_TOKEN`` variable, the file
        ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``), or None when there is none
    """
    if os.environ.get(TOKEN_VAR):
        return f"the {TOKEN_VAR} environment variable"
    if os.environ.get(TOKEN_PATH_VAR):
        return f"the file {TOKEN_PATH_VAR} names ({os.environ[TOKEN_PATH_VAR]})"
    path = default_token_path()
    return f"the file {path}" if path.is_file() and path.stat().st_size > 0 else None


def authentication_advice(address: str) -> str:
    """
    :param address: the cluster's address
    :return: why the cluster refused this process, and how to give this process the cluster's token
    """
    source, mode = token_source(), os.environ.get(AUTH_MODE_VAR, "").lower()
    path = os.environ.get(TOKEN_PATH_VAR)
    if mode == "disabled":
        presented = f"{AUTH_MODE_VAR}=disabled in this process, so it presented no token"
    elif not os.environ.get(TOKEN_VAR) and path and not (os.path.isfile(path) and os.path.getsize(path) > 0):
        presented = f"{TOKEN_PATH_VAR} names {path}, which does not exist or is empty"
    elif source is None:
        presented = (
            f"this process has no token ({TOKEN_VAR} and {TOKEN_PATH_VAR} are not set and {default_token_path()} "
            f"does not exist)"
        )
    else:
        presented = f"this process presented the token of {source}, which is not the cluster's"
    unset_mode = f"; unset {AUTH_MODE_VAR} (or set it to token)" if mode == "disabled" else ""
    return (
        f"The Ray cluster at {address} refused this process: its token authentication is on and {presented}. "
        f"Give this process the cluster's token: copy the head node's ~/.ray/auth_token (`ray get-auth-token` on the "
        f"head node prints it) to {default_token_path()}, or set {TOKEN_VAR} to the token, or {TOKEN_PATH_VAR} to a "
        f"file that holds it{unset_mode}. Keep the cluster's authentication on (RAY_AUTH_MODE=disabled on the "
        f"cluster would let anyone who reaches it run code); see {DOCS_PAGE}."
    )


def present_token() -> bool:
    """
    Make this process present its Ray token when it joins a cluster by address. Ray itself does so only when
    ``RAY_AUTH_MODE=token`` is set (``ray start --head`` and a local ``ray.init()`` turn token authentication on when
    they find a token, a client given an address does not): when ``RAY_AUTH_MODE`` is unset and Ray finds a token
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), set ``RAY_AUTH_MODE=token`` for this process
    and its children. An explicit ``RAY_AUTH_MODE`` is left as it is. A cluster without authentication accepts a
    client that presents a token.

    :return: whether this process presents a token
    :raises RayAuthenticationError: (from :func:`ensure_ray`) when ``RAY_AUTH_TOKEN_PATH`` names a file Ray cannot read
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - a Ray without token authentication (before 2.52)
        return False
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the token as it is now, not as an earlier ray.init() of this process read it
    mode = os.environ.get(AUTH_MODE_VAR)
    if mode is not None:
        return mode.lower() == "token"
    if not loader.has_token(ignore_auth_mode=True):
        return False
    os.environ[AUTH_MODE_VAR] = "token"
    Config.initialize("")  # Ray keeps RAY_AUTH_MODE in a cached config: read it again
    return True


def is_authentication_failure(error: BaseException) -> bool:
    """:return: whether ``error``, or an error it was raised from, is a cluster refusing this process's token"""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, AUTHENTICATION_ERRORS) or "InvalidAuthToken" in str(seen):
            return True
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False


def ensure_ray(address: str | None, init_kwargs: dict[str, Any] | None = None) -> bool:
    """
    Start or join Ray unless it is already initialised (Ray's usage statistics are off unless the caller set
    ``RAY_USAGE_STATS_ENABLED``). Joining a cluster by address, this process presents the cluster's token
    (:func:`present_token`).

    :param address: the cluster to join (``ray.init(address=address)``); None starts a local instance without the
        dashboard and without the workers' logs on this terminal
    :param init_kwargs: further arguments of ``ray.init``
    :return: whether this call initialised Ray
    :raises RayAuthenticationError: when the cluster refuses this process's token (or finds none)
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
    joins = kwargs.get("address") not in (None, "local")
    try:
        if joins:
            present_token()
        ray.init(**kwargs)
    except JOIN_ERRORS as error:
        if joins and is_authentication_failure(error):
            raise RayAuthenticationError(str(kwargs["address"])) from error
        raise
    return True


def node_cpus() -> list[float]:
    """:return: the CPUs of each live node of the cluster"""
    return [float(node.get("Resources", {}).get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")]


def actors_that_fit(cpus: list[float], num_cpus: float, scheduling: str | None) -> int:
    """
    :param cpus: the CPUs of each node
    :param num_cpus: CPUs per actor (> 0)
    :param scheduling: the placement strategy (see :func:`reserve`)
    :return: how many actors of ``num_cpus`` CPUs the nodes hold at once, placed as ``scheduling`` says
    """
    per_node = [math.floor(cpu / num_cpus + 1e-6) for cpu in cpus]  # Ray counts resources in 1e-4 units
    if scheduling == "strict_spread":
        return sum(1 for fitting in per_node if fitting >= 1)
    if scheduling == "strict_pack":
        return max(per_node, default=0)
    return sum(per_node)


def cpus_that_fit(cpus: list[float], n_actors: int, scheduling: str | None) -> float | None:
    """
    :param cpus: the CPUs of each node
    :param n_actors: the number of actors
    :param scheduling: the placement strategy
    :return: a ``num_cpus_per_actor`` (hundredths) with which ``n_actors`` actors fit, or None when none does
    """
    if scheduling == "strict_spread":
        candidate = sorted(cpus, reverse=True)[n_actors - 1] if len(cpus) >= n_actors else 0.0
    elif scheduling == "strict_pack":
        candidate = max(cpus, default=0.0) / n_actors
    else:
        candidate = sum(cpus) / n_actors
    candidate = math.floor(candidate * 100 + 1e-6) / 100
    return candidate if candidate > 0 and actors_that_fit(cpus, candidate, scheduling) >= n_actors else None


def count(number: float, noun: str) -> str:
    """:return: e.g. ``1 CPU``, ``2.5 CPUs``"""
    return f"{number:g} {noun}{'' if number == 1 else 's'}"


def describe_request(n_actors: int, num_cpus: float, scheduling: str | None) -> str:
    """:return: e.g. ``8 actors x 1 CPU = 8 CPUs (scheduling='spread')``"""
    where = {"strict_spread": ", each on a node of its own", "strict_pack": ", all on one node"}.get(scheduling or "", "")
    total = count(n_actors * num_cpus, "CPU")
    return f"{count(n_actors, 'actor')} x {num_cpus:g} CPU = {total}{where} (scheduling={scheduling!r})"


def describe_cluster(cpus: list[float]) -> str:
    """:return: e.g. ``2 CPUs in all (1 node: 2 CPUs)``"""
    per_node = " + ".join(f"{cpu:g}" for cpu in cpus) or "none"
    return f"{count(sum(cpus), 'CPU')} in all ({count(len(cpus), 'node')}: {per_node} CPUs)"


def remedies(
    n_actors: int, num_cpus: float, scheduling: str | None, cpus: list[float], fewer_actors: Callable[[int], str] | None
) -> list[str]:
    """:return: the changes with which the actors fit the nodes, none of them a setting already in use"""
    fit, options = actors_that_fit(cpus, num_cpus, scheduling), []
    if fit >= 1 and fewer_actors is not None:
        options.append(fewer_actors(fit))
    smaller = cpus_that_fit(cpus, n_actors, scheduling)
    if smaller is not None:
        options.append(f"num_cpus_per_actor={smaller:g} (fractions are fine)")
    loose = {"strict_spread": "spread", "strict_pack": "pack"}.get(scheduling or "")
    if loose is not None and actors_that_fit(cpus, num_cpus, loose) >= n_actors:
        options.append(f"scheduling={loose!r}")
    return [*options, "more nodes (RAY_AUTH_MODE=token ray start --address=HEAD:6379 on each, with the token)"]


def check_fits(
    n_actors: int, num_cpus: float, scheduling: str | None, owner: str, fewer_actors: Callable[[int], str] | None
) -> None:
    """
    Fail at once when the cluster's nodes, even idle, cannot hold the actors (rather than wait for resources that will
    never come). The nodes are those alive now: an autoscaler's future nodes are not counted.

    :param n_actors: the number of actors
    :param num_cpus: CPUs per actor
    :param scheduling: the placement strategy
    :param owner: who asks, for the message (``RayVecEnv(n_envs=64, envs_per_actor=8)``)
    :param fewer_actors: the owner's advice for at most ``n`` actors, given ``n`` (None: no such advice)
    :raises RuntimeError: when the actors cannot fit
    """
    if num_cpus <= 0:
        return
    cpus = node_cpus()
    fit = actors_that_fit(cpus, num_cpus, scheduling)
    if fit >= n_actors:
        return
    fitting = f"at most {fit} such {'actor fits' if fit == 1 else 'actors fit'}"
    changes = "; ".join(remedies(n_actors, num_cpus, scheduling, cpus, fewer_actors))
    raise RuntimeError(
        f"{owner} needs {describe_request(n_actors, num_cpus, scheduling)}, but the Ray cluster has "
        f"{describe_cluster(cpus)} (ray.cluster_resources()), where {fitting}: it can never place them. "
        f"Any of these fits: {changes}."
    )


def reserve(
    n_actors: int,
    num_cpus: float,
    scheduling: str | None,
    timeout_s: float,
    owner: str = "Ray",
    fewer_actors: Callable[[int], str] | None = None,
) -> PlacementGroup | None:
    """
    Reserve one bundle of ``num_cpus`` CPUs per actor in a placement group, failing at once when the cluster's nodes
    cannot hold them.

    :param n_actors: the number of actors
    :param num_cpus: CPUs per actor
    :param scheduling: ``"spread"`` (over as many nodes as possible), ``"strict_spread"`` (one node per actor),
        ``"pack"``, ``"strict_pack"``, or None (no placement group: Ray's default scheduling)
    :param timeout_s: how long to wait for the resources when other work holds them
    :param owner: who asks, for the messages
    :param fewer_actors: the owner's advice for at most ``n`` actors, given ``n``, for the messages
    :return: the placement group, ready (None when ``scheduling`` is None)
    :raises ValueError: for an unknown ``scheduling`` or a negative ``num_cpus``
    :raises RuntimeError: at once when the cluster's nodes cannot hold the actors, or when the resources do not come
        free within ``timeout_s``
    """
    if scheduling is not None and scheduling not in STRATEGIES:
        raise ValueError(f"scheduling={scheduling!r} is not one of {sorted(STRATEGIES)} or None")
    if num_cpus < 0:
        raise ValueError(f"num_cpus_per_actor={num_cpus} must be >= 0")
    check_fits(n_actors, num_cpus, scheduling, owner, fewer_actors)
    if scheduling is None:
        return None
    group = placement_group([{"CPU": num_cpus}] * n_actors, strategy=STRATEGIES[scheduling])
    if group.wait(timeout_seconds=timeout_s):
        return group
    remove_placement_group(group)
    raise RuntimeError(
        f"{owner} needs {describe_request(n_actors, num_cpus, scheduling)}; the Ray cluster has "
        f"{describe_cluster(node_cpus())}, enough when idle, but {count(ray.available_resources().get('CPU', 0), 'CPU')} "
        f"free after startup_timeout_s={timeout_s:g} s: other work holds the rest. Close the RayVecEnvs and "
        f"RayBranchPools you no longer use (close()), or raise startup_timeout_s to wait longer."
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
