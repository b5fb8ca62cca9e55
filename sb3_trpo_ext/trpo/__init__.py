from sb3_trpo_ext.trpo.trpo import TRPO

__all__ = ["TRPO"]
