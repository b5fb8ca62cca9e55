"""sb3-trpo-ext: the Trust Region Policy Optimization family for Stable-Baselines3."""

import os

from sb3_trpo_ext.maskable import MaskableNaturalPG, MaskableTRPO
from sb3_trpo_ext.npg import NaturalPG
from sb3_trpo_ext.recurrent import RecurrentNaturalPG, RecurrentTRPO
from sb3_trpo_ext.trpo import TRPO
from sb3_trpo_ext.vine import VineTRPO, VineWorkerWrapper

with open(os.path.join(os.path.dirname(__file__), "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = [
    "TRPO",
    "NaturalPG",
    "VineTRPO",
    "VineWorkerWrapper",
    "MaskableTRPO",
    "MaskableNaturalPG",
    "RecurrentTRPO",
    "RecurrentNaturalPG",
    "__version__",
]
