"""Natural policy gradient (Kakade 2001; as in Rajeswaran et al. 2017): the TRPO machinery with a fixed step."""

from typing import Any, Literal

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv

from sb3_trpo_ext.common.base import NaturalGradientAlgorithm, StepOutcome
from sb3_trpo_ext.common.natural_gradient import apply_fixed_step
from sb3_trpo_ext.common.validation import check_positive

STEP_MODES = ("kl", "constant")


class NaturalPG(NaturalGradientAlgorithm):
    """
    Natural policy gradient: the same Fisher / conjugate-gradient direction as TRPO, a fixed step, no line search.

    - ``step_mode="kl"`` (default): the KL-normalized step ``beta * s`` with ``beta = sqrt(2 target_kl / s^T F s)``,
      so each update moves the policy by ``target_kl`` under the quadratic KL model (mjrl's
      ``normalized_step_size`` is ``2 * target_kl``);
    - ``step_mode="constant"``: the plain natural gradient step ``step_size * s``.

    The paper (Figure 4) found this works on easy tasks but, without the line search, fails to learn hopping and
    walking. A step whose result is non-finite is undone.

    :param policy: the policy model (``MlpPolicy``, ``CnnPolicy``, ``MultiInputPolicy``) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param step_mode: ``"kl"`` (KL-normalized step) or ``"constant"`` (fixed step size)
    :param step_size: the step size of ``step_mode="constant"``
    :param kwargs: every other keyword of :class:`~sb3_trpo_ext.common.base.NaturalGradientAlgorithm`
        (``learning_rate``, ``n_steps``, ``batch_size``, ``target_kl``, ``cg_max_steps``, ``cg_damping``, ...)
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        step_mode: Literal["kl", "constant"] = "kl",
        step_size: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}.")
        check_positive("step_size", step_size)
        self.step_mode = step_mode
        self.step_size = step_size
        super().__init__(policy, env, **kwargs)

    def _apply_step(
        self,
        params: list[th.nn.Parameter],
        direction: th.Tensor,
        full_step_scale: float,
        evaluate: Any,
        old_objective: float,
    ) -> StepOutcome:
        scale = full_step_scale if self.step_mode == "kl" else self.step_size
        kept, objective, kl = apply_fixed_step(params, scale * direction, evaluate)
        if not kept:
            return StepOutcome(accepted=False, objective=old_objective, kl=0.0, step_size=0.0, non_finite=True)
        return StepOutcome(accepted=True, objective=objective, kl=kl, step_size=scale)
