"""
Actors that the cluster's nodes can never hold: ``RayVecEnv`` and ``RayBranchPool`` fail at once (not after
``startup_timeout_s``) with what they need, what the cluster has, and changes that fit, none of them a setting already
in use. The module's local Ray instance has 2 CPUs on one node.
"""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from sb3_trpo_ext.distributed import RayBranchPool, RayVecEnv  # noqa: E402
from sb3_trpo_ext.distributed.cluster import actors_that_fit, cpus_that_fit  # noqa: E402

pytestmark = [pytest.mark.usefixtures("local_ray"), pytest.mark.timeout(120)]

FAST_S = 20.0
"""Well under the default startup_timeout_s (300 s) that the old code waited before failing."""


def fails_at_once(build: object, **kwargs: object) -> str:
    """:return: the message of the RuntimeError that ``build(**kwargs)`` raises within FAST_S seconds"""
    start = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        build(**kwargs)  # type: ignore[operator]
    elapsed = time.monotonic() - start
    assert elapsed < FAST_S, f"took {elapsed:.0f} s to fail: {raised.value}"
    return str(raised.value)


def test_ray_vec_env_too_big_for_the_cluster_fails_at_once_naming_needed_and_available_cpus() -> None:
    message = fails_at_once(RayVecEnv, env_fns_or_id="CartPole-v1", n_envs=64, envs_per_actor=8)
    assert "RayVecEnv(n_envs=64, envs_per_actor=8) needs 8 actors x 1 CPU = 8 CPUs (scheduling='spread')" in message
    assert "the Ray cluster has 2 CPUs in all (1 node: 2 CPUs)" in message and "at most 2 such actors fit" in message
    assert "envs_per_actor=32 or more (2 actors)" in message and "num_cpus_per_actor=0.25" in message
    assert "scheduling='spread'" not in message.split("Any of these fits")[1]  # the setting in use is not advice
    assert ray.available_resources().get("CPU", 0) == 2  # nothing reserved, nothing left behind


def test_strict_spread_on_one_node_suggests_spread_and_no_placement_group_fails_at_once_too() -> None:
    message = fails_at_once(
        RayVecEnv, env_fns_or_id="CartPole-v1", n_envs=4, envs_per_actor=2, num_cpus_per_actor=0.5, scheduling="strict_spread"
    )
    assert "2 actors x 0.5 CPU = 1 CPU, each on a node of its own (scheduling='strict_spread')" in message
    assert "scheduling='spread'" in message and "envs_per_actor=4 or more (1 actor)" in message
    message = fails_at_once(RayVecEnv, env_fns_or_id="CartPole-v1", n_envs=24, envs_per_actor=8, scheduling=None)
    assert "3 actors x 1 CPU = 3 CPUs (scheduling=None)" in message and "2 CPUs in all" in message


def test_branch_pool_too_big_for_the_cluster_fails_at_once() -> None:
    pool = RayBranchPool("CartPole-v1", n_actors=4, num_cpus_per_actor=1.0)
    message = fails_at_once(pool.start)
    assert "RayBranchPool(n_actors=4) needs 4 actors x 1 CPU = 4 CPUs" in message
    assert "n_actors=2 or fewer" in message and "num_cpus_per_actor=0.5" in message
    assert not pool.started
    # more CPUs per actor than any node has: no number of actors fits, n_actors=None included
    message = fails_at_once(RayBranchPool("CartPole-v1", num_cpus_per_actor=3.0).start)
    assert "at most 0 such actors fit" in message and "n_actors=" not in message.split("Any of these fits")[1]


@pytest.mark.parametrize(
    "cpus, num_cpus, scheduling, fit",
    [
        ([2.0], 1.0, "spread", 2),
        ([2.0], 0.1, "pack", 20),  # 2 / 0.1 is 19.999... in floats
        ([4.0, 2.0], 1.5, "spread", 3),
        ([4.0, 2.0], 1.0, "strict_spread", 2),
        ([4.0, 2.0], 1.0, "strict_pack", 4),
        ([4.0, 2.0], 1.0, None, 6),
    ],
)
def test_actors_that_fit(cpus: list[float], num_cpus: float, scheduling: str | None, fit: int) -> None:
    assert actors_that_fit(cpus, num_cpus, scheduling) == fit


def test_cpus_that_fit() -> None:
    assert cpus_that_fit([2.0], 8, "spread") == 0.25
    assert cpus_that_fit([2.0, 1.0], 3, "strict_spread") is None
    assert cpus_that_fit([2.0, 1.0], 2, "strict_spread") == 1.0
    assert cpus_that_fit([2.0, 1.0], 3, "strict_pack") == 0.66


def test_cpus_held_by_another_env_wait_startup_timeout_and_say_so_without_advising_the_setting_in_use() -> None:
    holder = RayVecEnv("CartPole-v1", n_envs=2, envs_per_actor=1)  # 2 actors x 1 CPU: the whole cluster
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError) as raised:
            RayVecEnv("CartPole-v1", n_envs=2, envs_per_actor=2, startup_timeout_s=3)
        assert time.monotonic() - start < FAST_S
    finally:
        holder.close()
    message = str(raised.value)
    assert "needs 1 actor x 1 CPU = 1 CPU (scheduling='spread')" in message and "0 CPUs free" in message
    assert "startup_timeout_s=3 s" in message and "Close the RayVecEnvs" in message
    assert "scheduling=" not in message.split("(scheduling='spread')")[1]
