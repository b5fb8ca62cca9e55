from sb3_trpo_ext.npg.npg import NaturalPG

__all__ = ["NaturalPG"]
