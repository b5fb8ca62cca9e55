from sb3_trpo_ext.maskable.maskable import MaskableNaturalPG, MaskableTRPO, MaskingMixin

__all__ = ["MaskableNaturalPG", "MaskableTRPO", "MaskingMixin"]
