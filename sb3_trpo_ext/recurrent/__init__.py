from sb3_trpo_ext.recurrent.recurrent import RecurrentNaturalPG, RecurrentTRPO

__all__ = ["RecurrentNaturalPG", "RecurrentTRPO"]
