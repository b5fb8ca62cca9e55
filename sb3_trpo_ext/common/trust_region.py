"""
The trust region's size and the Fisher's damping in the units the step uses, from what the user gave.

Our step bounds the mean over states of the KL divergence between the *whole* old and new action distributions (the
paper's ``delta``). sb3-contrib's TRPO averages the KL over the ``d`` terms SB3's ``kl_divergence`` returns per state
(the dimensions of a Box, or the bits of a MultiBinary; one term for Discrete and MultiDiscrete), so its
``target_kl`` is ours divided by ``d``; its Fisher, the Hessian of that average, is ours divided by ``d``, so its
``cg_damping`` weighs ``d`` times more than the same number here. :func:`kl_dimensions` gives ``d``.

- An explicit ``target_kl`` / ``cg_damping`` keeps the paper's whole-distribution meaning
  (``trust_region_units="distribution"``, the default), or is read in sb3-contrib's units
  (``trust_region_units="sb3-contrib"``: both multiplied by ``d``), so a hyperparameter set tuned for sb3-contrib
  carries over unchanged when the import is swapped.
- Left at ``None``, they are 0.01 and 0.1 per term: ``0.01 d`` and ``0.1 d`` here, sb3-contrib's defaults. The
  paper's 0.01 on the whole distribution was chosen for batches of 50K-1M steps; on SB3-size batches it barely moves
  a policy on many action dimensions. The runs that chose this are the class-defaults table of
  ``python benchmarks/matrix.py --preset defaults`` (README and the docs' results page): per task, these defaults
  against sb3-contrib's, and the 0.1.0 defaults (``target_kl=0.01, cg_damping=0.1`` on the whole distribution, the
  ``trpo_ext-defaults-0.1.0`` cells) against these.
"""

from typing import Literal

import numpy as np
from gymnasium import spaces

TrustRegionUnits = Literal["distribution", "sb3-contrib"]
TRUST_REGION_UNITS: tuple[str, ...] = ("distribution", "sb3-contrib")

TARGET_KL_PER_TERM = 0.01
"""The default trust region per KL term (sb3-contrib's default ``target_kl``)."""
CG_DAMPING_PER_TERM = 0.1
"""The default damping per KL term (sb3-contrib's default ``cg_damping``)."""


def kl_dimensions(action_space: spaces.Space) -> int:
    """
    ``d``: the number of terms per state that sb3-contrib's mean KL averages over.

    :param action_space: the action space
    :return: the size of a Box or MultiBinary space, 1 for Discrete and MultiDiscrete (whose KL is one term per state)
    """
    if isinstance(action_space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(action_space.shape))
    return 1


def check_trust_region_units(units: str) -> None:
    """:raises ValueError: for an unknown ``trust_region_units``"""
    if units not in TRUST_REGION_UNITS:
        raise ValueError(
            f"trust_region_units must be one of {TRUST_REGION_UNITS}, got {units!r}: 'distribution' reads target_kl and "
            "cg_damping as the KL of the whole action distribution (the paper's delta), 'sb3-contrib' per action "
            "dimension, as sb3-contrib's TRPO does."
        )


def resolve_trust_region(
    target_kl: float | None, cg_damping: float | None, units: TrustRegionUnits, action_space: spaces.Space
) -> tuple[float, float]:
    """
    :param target_kl: the user's ``target_kl`` (``None``: the default)
    :param cg_damping: the user's ``cg_damping`` (``None``: the default)
    :param units: how explicit values are read
    :param action_space: the action space (for ``d``)
    :return: the bound on the mean whole-distribution KL of a step, and the damping added to that KL's Fisher
    """
    d = kl_dimensions(action_space)
    scale = d if units == "sb3-contrib" else 1
    max_kl = TARGET_KL_PER_TERM * d if target_kl is None else target_kl * scale
    damping = CG_DAMPING_PER_TERM * d if cg_damping is None else cg_damping * scale
    return float(max_kl), float(damping)
