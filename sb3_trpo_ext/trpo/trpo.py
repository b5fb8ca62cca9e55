"""TRPO, single-path: Schulman et al. (2015), https://arxiv.org/abs/1502.05477, Section 5.1 and Appendix C."""

from typing import Any

import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_trpo_ext.common.base import NaturalGradientAlgorithm
from sb3_trpo_ext.common.natural_gradient import LineSearch, StepRule
from sb3_trpo_ext.common.precision import PrecisionSetting
from sb3_trpo_ext.common.trust_region import TrustRegionUnits
from sb3_trpo_ext.common.validation import check_in_range, check_int_at_least


class TRPO(NaturalGradientAlgorithm):
    """
    Trust Region Policy Optimization, single-path method, with GAE advantages and an Adam-fitted critic.

    Each update maximizes the importance-weighted surrogate subject to the mean KL between old and new action
    distributions staying below ``target_kl``: conjugate gradient on the analytic Fisher gives the direction, the
    step ``beta = sqrt(2 delta / s^T F s)`` meets the quadratic KL model, and a backtracking line search accepts the
    first shrunk step that improves the surrogate with the *measured* mean KL <= ``target_kl`` (otherwise the
    parameters are left exactly as they were).

    Paper: https://arxiv.org/abs/1502.05477. Keyword names follow sb3-contrib's TRPO. An explicit ``target_kl`` is
    the paper's whole-distribution KL; ``trust_region_units="sb3-contrib"`` reads it (and ``cg_damping``) per action
    dimension as sb3-contrib does, so its YAML carries over unchanged. Left at ``None``, both default to sb3-contrib's
    defaults in our units (0.01 and 0.1 per action dimension).

    :param policy: the policy model (``MlpPolicy``, ``CnnPolicy``, ``MultiInputPolicy``) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the critic's Adam optimizer (constant or schedule)
    :param n_steps: steps to run per environment per update
    :param batch_size: mini-batch size of the critic's updates
    :param gamma: discount factor
    :param cg_max_steps: conjugate-gradient iterations ``k`` (the paper's 10; sb3-contrib's default is 15: the docs'
        results page compares the class defaults of both)
    :param cg_damping: damping added to the Fisher of the whole-distribution KL (``None``: 0.1 per action dimension,
        sb3-contrib's default; see ``trust_region_units``)
    :param line_search_shrinking_factor: factor by which the step shrinks after a rejected try, in (0, 1)
    :param line_search_max_iter: maximal number of line-search tries
    :param line_search_rescale_on_kl: after a try rejected for its KL, aim the next one at the trust region's
        boundary (the quadratic KL model through the measured KL) instead of shrinking by the factor (off by default;
        ``benchmarks/ablation.py`` variant ``kl-rescale`` compares the two; the Atari YAML turns it on)
    :param n_critic_updates: epochs of critic updates per rollout
    :param gae_lambda: GAE trade-off of bias and variance
    :param use_sde: use generalized State Dependent Exploration
    :param sde_sample_freq: resample the gSDE noise every n steps (-1: only at the start of a rollout)
    :param rollout_buffer_class: rollout buffer class (``None``: chosen from the observation space)
    :param rollout_buffer_kwargs: keyword arguments of the rollout buffer
    :param normalize_advantage: normalize the advantages
    :param target_kl: the paper's ``delta``: bound on the mean whole-distribution KL of an update
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
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int = 10,
        cg_damping: float | None = None,
        line_search_shrinking_factor: float = 0.8,
        line_search_max_iter: int = 10,
        line_search_rescale_on_kl: bool = False,
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
        check_in_range("line_search_shrinking_factor", line_search_shrinking_factor, 0.0, 1.0, False, False, " Peers use 0.8.")
        check_int_at_least("line_search_max_iter", line_search_max_iter, 1, " Peers use 10.")
        self.line_search_shrinking_factor = line_search_shrinking_factor
        self.line_search_max_iter = line_search_max_iter
        self.line_search_rescale_on_kl = line_search_rescale_on_kl
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
        """:return: the backtracking line search from ``beta * s``, within ``max_kl``"""
        return LineSearch(
            self.max_kl, self.line_search_shrinking_factor, self.line_search_max_iter, self.line_search_rescale_on_kl
        )
