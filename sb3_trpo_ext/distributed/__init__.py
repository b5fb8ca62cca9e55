"""
Environments on a Ray cluster: :class:`RayVecEnv`, an SB3 ``VecEnv`` whose envs live in Ray actors, and
:class:`RayBranchPool`, Ray actors that run the vine's branch rollouts.

Needs Ray: ``pip install "sb3-trpo-ext[ray]"``.
"""

try:
    import ray  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"sb3_trpo_ext.distributed needs Ray ({error}): install it with pip install 'sb3-trpo-ext[ray]' "
        f"(or pip install 'ray>=2.9')"
    ) from error

from sb3_trpo_ext.distributed.branch_pool import BranchWorkerLost, RayBranchPool
from sb3_trpo_ext.distributed.cluster import ActorPlace, EnvWorkerLost, RayAuthenticationError
from sb3_trpo_ext.distributed.ray_vec_env import RayVecEnv

__all__ = ["ActorPlace", "BranchWorkerLost", "EnvWorkerLost", "RayAuthenticationError", "RayBranchPool", "RayVecEnv"]
