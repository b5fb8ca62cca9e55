"""Natural policy gradient (Kakade 2001; as in Rajeswaran et al. 2017): the TRPO machinery with a fixed step."""

from typing import Any, Literal

import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_trpo_ext.common.base import NaturalGradientAlgorithm
from sb3_trpo_ext.common.natural_gradient import FixedStep, StepRule
from sb3_trpo_ext.common.precision import PrecisionSetting
from sb3_trpo_ext.common.trust_region import TrustRegionUnits
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
    :param learning_rate: learning rate of the critic's Adam optimizer (constant or schedule)
    :param n_steps: steps to run per environment per update
    :param batch_size: mini-batch size of the critic's updates
    :param gamma: discount factor
    :param cg_max_steps: conjugate-gradient iterations ``k`` (the paper's 10; sb3-contrib's default is 15: the docs'
        results page compares the class defaults of both)
    :param cg_damping: damping added to the Fisher of the whole-distribution KL (``None``: 0.1 per action dimension,
        sb3-contrib's default; see ``trust_region_units``)
    :param n_critic_updates: epochs of critic updates per rollout
    :param gae_lambda: GAE trade-off of bias and variance
    :param use_sde: use generalized State Dependent Exploration
    :param sde_sample_freq: resample the gSDE noise every n steps (-1: only at the start of a rollout)
    :param rollout_buffer_class: rollout buffer class (``None``: chosen from the observation space)
    :param rollout_buffer_kwargs: keyword arguments of the rollout buffer
    :param normalize_advantage: normalize the advantages
    :param target_kl: the KL each ``step_mode="kl"`` update moves the policy by (whole-distribution mean KL)
        (``None``: 0.01 per action dimension, sb3-contrib's default; see :mod:`sb3_trpo_ext.common.trust_region`
        for the runs that chose it)
    :param trust_region_units: how an explicit ``target_kl`` and ``cg_damping`` are read: ``"distribution"`` (the
        paper's whole-distribution KL) or ``"sb3-contrib"`` (per action dimension, as sb3-contrib's TRPO: both are
        multiplied by the action dimension, so sb3-contrib's hyperparameters carry over unchanged)
    :param sub_sampling_factor: use only every k-th sample of the rollout for the policy step (as in sb3-contrib)
    :param fisher_sample_fraction: fraction of the policy batch used for the Fisher-vector products (paper: 0.1)
    :param damped_step_length: scale the full step by ``sqrt(2 delta / s^T (F + damping I) s)``, as sb3-contrib and
        the paper's reference code (modular_rl) do, instead of the undamped ``s^T F s`` of the paper's text (off by
        default; the docs' results page compares the two: ``benchmarks/ablation.py`` variant ``damped-full-step`` and
        the ``trpo_ext-defaults-damped`` cells of the defaults matrix)
    :param precision: the number format of the rollout's forward passes, the critic fit and the Fisher-vector
        products: ``"auto"`` (bfloat16 for a convolutional policy on a device with bfloat16 units, else float32),
        ``"float32"`` or ``"bfloat16"``; the gradient, conjugate gradient, step length and line search (the measured
        KL) are float32 whatever it says (:mod:`sb3_trpo_ext.common.precision`; the choice is ``model.backends``)
    :param stats_window_size: window size of the rollout logging (episodes)
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments passed to the policy on creation
    :param verbose: 0 no output, 1 info, 2 debug
    :param seed: seed of the pseudo random generators
    :param device: device to run on (cpu, cuda, auto)
    :param _init_setup_model: whether to build the network at the creation of the instance
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        step_mode: Literal["kl", "constant"] = "kl",
        step_size: float = 0.1,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int = 10,
        cg_damping: float | None = None,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float | None = None,
        trust_region_units: TrustRegionUnits = "distribution",
        sub_sampling_factor: int = 1,
        fisher_sample_fraction: float = 1.0,
        damped_step_length: bool = False,
        precision: PrecisionSetting = "auto",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}.")
        check_positive("step_size", step_size)
        self.step_mode = step_mode
        self.step_size = step_size
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            gamma=gamma,
            cg_max_steps=cg_max_steps,
            cg_damping=cg_damping,
            n_critic_updates=n_critic_updates,
            gae_lambda=gae_lambda,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            normalize_advantage=normalize_advantage,
            target_kl=target_kl,
            trust_region_units=trust_region_units,
            sub_sampling_factor=sub_sampling_factor,
            fisher_sample_fraction=fisher_sample_fraction,
            damped_step_length=damped_step_length,
            precision=precision,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _step_rule(self) -> StepRule:
        """:return: the fixed step: ``beta * s`` (``step_mode="kl"``) or ``step_size * s`` (``"constant"``)"""
        return FixedStep(None if self.step_mode == "kl" else self.step_size)
