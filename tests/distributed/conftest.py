"""
The RayVecEnv tests run Ray, and Ray may run only inside a network namespace of our own (loopback only): this file
skips the whole folder elsewhere, and gives each module one Ray instance.

Run them with ``bash tests/distributed/run.sh`` (``unshare -n`` + ``ip link set lo up`` + pytest).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

HOW_TO_RUN = (
    "run them with `bash tests/distributed/run.sh` (as root: unshare -n sh -c 'ip link set lo up; "
    "RAY_USAGE_STATS_ENABLED=0 .venv/bin/python -m pytest tests/distributed')"
)


def network_interfaces() -> list[str]:
    """:return: the network interfaces of this process's network namespace (``/sys/class/net`` shows the host's)"""
    return [name for _, name in socket.if_nameindex()]


def isolation_problem() -> str | None:
    """:return: why the Ray tests cannot run here, or None when they can"""
    interfaces = network_interfaces()
    if interfaces != ["lo"]:
        return (
            f"Ray tests run only in a private network namespace with nothing but loopback (this one has "
            f"{', '.join(interfaces)}): {HOW_TO_RUN}"
        )
    if os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        return f"RAY_USAGE_STATS_ENABLED is not 0: {HOW_TO_RUN}"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed: pip install 'sb3-trpo-ext[ray]'"
    return None


@pytest.fixture(scope="session", autouse=True)
def isolated_network() -> None:
    """Skip every test of this folder unless the process is inside a loopback-only network namespace."""
    problem = isolation_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def local_ray(isolated_network: None) -> Iterator[None]:
    """A local Ray instance on 127.0.0.1 for the module (2 CPUs: one per actor of a 4-env, 2-per-actor RayVecEnv)."""
    import ray

    # address="local": always a new instance of our own, never one that another process left running on this host
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
