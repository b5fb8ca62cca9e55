from sb3_trpo_ext.vine.branches import VineWorkerWrapper
from sb3_trpo_ext.vine.vine import VineTRPO

__all__ = ["VineTRPO", "VineWorkerWrapper"]
