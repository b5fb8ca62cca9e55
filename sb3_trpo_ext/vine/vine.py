"""TRPO, vine method: Schulman et al. (2015), https://arxiv.org/abs/1502.05477, Section 5.2."""

from typing import Any, ClassVar, Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.policy_batch import repeat_observations
from sb3_trpo_ext.common.precision import PrecisionSetting
from sb3_trpo_ext.common.rollout_policy import Observation
from sb3_trpo_ext.common.rollouts import collect
from sb3_trpo_ext.common.trust_region import TrustRegionUnits
from sb3_trpo_ext.common.user_warnings import warn_at_user_call
from sb3_trpo_ext.common.validation import check_int_at_least
from sb3_trpo_ext.trpo.trpo import TRPO
from sb3_trpo_ext.vine.branch_runner import BranchConfig, BranchExecutorSource, BranchRunner
from sb3_trpo_ext.vine.rollout_set import RolloutSet, VineBatch, sample_branch_actions, uses_all_actions

ACTION_SAMPLING = ("policy", "uniform")


class VineTRPO(TRPO):
    """
    Trust Region Policy Optimization, vine method.

    Each iteration: run trunk rollouts with the current policy (``n_steps`` per env, also used to fit the critic);
    pick a rollout set of ``n_rollout_states`` states uniformly among the visited ones and snapshot the simulator
    there; at each, draw ``n_actions_per_state`` actions from ``q`` (the policy, or uniform for discrete spaces);
    from each (state, action) run a branch rollout of ``rollout_length`` steps (in lockstep, one batched policy
    forward per step, spread over the VecEnv's workers); estimate ``Q`` from the branch returns (bootstrapped with
    the critic at the cut if ``bootstrap_branches``); take the TRPO step on the surrogate of Eq. (15) (Discrete
    spaces with every action rolled out) or Eq. (16) (self-normalized importance sampling), with the mean KL over
    the rollout-set states.

    With ``common_random_numbers`` the K branches from one state share the simulator's random state (restored from
    the same snapshot) and the same sequence of policy noise after their first action, which lowers the variance of
    ``Q(s, a_1) - Q(s, a_2)``.

    ``learn(total_timesteps)`` counts simulator steps, trunk plus branches, so vine and single-path runs compare at
    equal cost (``rollout/trunk_steps`` and ``rollout/branch_steps`` are logged). It runs whole iterations, as PPO
    runs whole rollouts: the last one may end past ``total_timesteps``, by up to one iteration (see
    :meth:`iteration_steps`; ``verbose=1`` prints the sizes, and a budget smaller than one iteration warns).

    Paper defaults: MuJoCo (Table 2): ``rollout_length`` 50 (Swimmer) / 100 (Hopper, Walker), ``n_actions_per_state``
    4, Q-values per batch 500 / 2500 (``n_rollout_states`` = 125 / 625), ``action_sampling="policy"``. Atari (Table 3):
    about 4 rollouts per state, ``action_sampling="uniform"``.

    :param policy: the policy model (``MlpPolicy``, ``CnnPolicy``, ``MultiInputPolicy``) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str); its envs must be snapshottable
        (see :mod:`sb3_trpo_ext.vine.snapshot`)
    :param n_rollout_states: number ``N`` of rollout-set states per iteration (at most ``n_steps * n_envs``: a larger
        value warns and takes every visited state)
    :param n_actions_per_state: number ``K`` of actions per state (for Discrete spaces, ``K >= n`` rolls out every
        action once and uses Eq. (15))
    :param rollout_length: length ``m`` of each branch rollout. The default 20 (shorter than the paper's 50/100, with
        ``bootstrap_branches``) comes from ``benchmarks/vine_study/``: bootstrapped branches of 10-25 steps gave
        gradient estimates as close to the reference as 50-step ones, at a half to a third of the simulator steps, on
        CartPole-v1, Pendulum-v1 and Hopper-v5
    :param action_sampling: ``"policy"`` (q = pi) or ``"uniform"`` (q uniform; discrete spaces only)
    :param bootstrap_branches: add ``gamma^m V(s_m)`` at the cut of a branch that did not end
    :param common_random_numbers: share simulator randomness and policy noise across the K branches of a state
    :param branch_envs_per_worker: clones of its env each worker keeps for branches; more branches than
        ``n_envs * branch_envs_per_worker`` run in successive waves. Few clones that stay in the CPU cache beat one big
        batch (``benchmarks/speed.py`` measures the vine's simulator steps per second)
    :param branch_pool: run the branches on Ray actors instead of the training env's workers
        (:class:`~sb3_trpo_ext.distributed.RayBranchPool`, each actor keeping ``branch_envs_per_worker`` clones);
        None: on the training env's workers
    :param learning_rate: learning rate of the critic's Adam optimizer (constant or schedule)
    :param n_steps: trunk steps per environment per iteration
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
        ``benchmarks/ablation.py`` variant ``kl-rescale`` compares the two)
    :param n_critic_updates: epochs of critic updates per rollout (on the trunk's samples)
    :param gae_lambda: GAE trade-off of bias and variance (for the critic's targets on the trunk)
    :param use_sde: use generalized State Dependent Exploration
    :param sde_sample_freq: resample the gSDE noise every n steps (-1: only at the start of a rollout or branch)
    :param rollout_buffer_class: rollout buffer class of the trunk (``None``: chosen from the observation space)
    :param rollout_buffer_kwargs: keyword arguments of the rollout buffer
    :param normalize_advantage: not used by the vine (its surrogate weighs Q-values, no advantages): accepted for
        TRPO's signature, a warning if set to ``False``
    :param target_kl: the paper's ``delta``: bound on the mean whole-distribution KL over the rollout-set states
        (``None``: 0.01 per action dimension, sb3-contrib's default; see :mod:`sb3_trpo_ext.common.trust_region`
        for the runs that chose it)
    :param trust_region_units: how an explicit ``target_kl`` and ``cg_damping`` are read: ``"distribution"`` (the
        paper's whole-distribution KL) or ``"sb3-contrib"`` (per action dimension, as sb3-contrib's TRPO: both are
        multiplied by the action dimension, so sb3-contrib's hyperparameters carry over unchanged)
    :param sub_sampling_factor: not used by the vine (its policy batch is the rollout set, ``n_rollout_states``):
        accepted for TRPO's signature, a warning if set to anything but 1
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

    policy_aliases: ClassVar = TRPO.policy_aliases

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        n_rollout_states: int = 64,
        n_actions_per_state: int = 4,
        rollout_length: int = 20,
        action_sampling: Literal["policy", "uniform"] = "policy",
        bootstrap_branches: bool = True,
        common_random_numbers: bool = True,
        branch_envs_per_worker: int = 32,
        branch_pool: BranchExecutorSource | None = None,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 1024,
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
        _check_vine_keywords(n_rollout_states, n_actions_per_state, rollout_length, branch_envs_per_worker, action_sampling)
        self.n_rollout_states = n_rollout_states
        self.n_actions_per_state = n_actions_per_state
        self.rollout_length = rollout_length
        self.action_sampling = action_sampling
        self.bootstrap_branches = bootstrap_branches
        self.common_random_numbers = common_random_numbers
        self.branch_envs_per_worker = branch_envs_per_worker
        if branch_pool is not None and not isinstance(branch_pool, BranchExecutorSource):
            raise TypeError(
                f"branch_pool must be a pool of branch workers such as sb3_trpo_ext.distributed.RayBranchPool(...) "
                f"(anything with a branch_runner method), got {type(branch_pool).__name__} {branch_pool!r}. In a zoo "
                "YAML entry, branch_pool: dict(...) holds RayBranchPool's keywords and is turned into a pool by "
                "--vec-env ray."
            )
        self.branch_pool = branch_pool
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            gamma=gamma,
            cg_max_steps=cg_max_steps,
            cg_damping=cg_damping,
            line_search_shrinking_factor=line_search_shrinking_factor,
            line_search_max_iter=line_search_max_iter,
            line_search_rescale_on_kl=line_search_rescale_on_kl,
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
        self._check_against_env()
        _warn_ignored_keywords(normalize_advantage, sub_sampling_factor)

    def _check_against_env(self) -> None:
        """The vine's settings against the env's action space and the trunk's size (when the model has an env)."""
        if getattr(self, "action_space", None) is not None and self.action_sampling == "uniform":
            if isinstance(self.action_space, spaces.Box):
                raise ValueError("action_sampling='uniform' needs a discrete action space; use 'policy' for Box actions.")
        if self.env is not None and self.n_rollout_states > self.n_steps * self.n_envs:
            warn_at_user_call(
                f"n_rollout_states={self.n_rollout_states} exceeds the trunk's visited states (n_steps * n_envs = "
                f"{self.n_steps} * {self.n_envs} = {self.n_steps * self.n_envs}): every visited state goes into the "
                "rollout set. Lower n_rollout_states or raise n_steps to choose among them."
            )

    def _setup_model(self) -> None:
        super()._setup_model()
        self.branch_runner: BranchRunner | None = None
        """The branch phase's runner on the training env (built on first use, kept across iterations)."""
        self.vine_batch: VineBatch | None = None
        """The last iteration's samples: set by ``collect_rollouts``, taken by ``train()`` (SB3's learn loop calls
        them in turn with no way to hand data from one to the other)."""
        if self.env is not None:  # fail at construction, with the fix, when branches cannot be run on the env
            self._warn_if_not_replayable(self._branch_runner(self.env).check())

    def _warn_if_not_replayable(self, problems: list[str] | None) -> None:
        """
        :param problems: per env whose step a snapshot does not replay, what differed (from the runner's check;
            ``None`` from a runner that does not replay)
        """
        if problems and self.common_random_numbers:
            warn_at_user_call(
                f"VineTRPO's common random numbers do not hold on this env: {problems[0]} The K branches of a state "
                "then see different randomness, which adds noise to Q(s, a_1) - Q(s, a_2). Draw the env's random "
                "numbers from self.np_random (gymnasium's generator, which snapshots capture), or register a snapshot "
                "adapter that captures your generator (sb3_trpo_ext.vine.snapshot.register_snapshot_adapter); "
                "common_random_numbers=False turns this check off."
            )

    def iteration_steps(self) -> tuple[int, int, int]:
        """
        The simulator steps of one iteration, which ``learn`` runs whole.

        :return: the trunk's steps (``n_steps * n_envs``), the fewest branch steps (one per branch: ``N * K``, where a
            branch's episode ends at its first step) and the most (``N * K * m``: every branch runs its ``m`` steps),
            with ``N`` at most the trunk's steps
        """
        trunk = self.n_steps * self.n_envs
        branches = min(self.n_rollout_states, trunk) * self.n_actions_per_state
        return trunk, branches, branches * self.rollout_length

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        total_timesteps, callback = super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        self._announce_budget(total_timesteps - self.num_timesteps)
        return total_timesteps, callback

    def _announce_budget(self, budget: int) -> None:
        """
        Say (at ``verbose >= 1``) that ``learn`` runs whole iterations, and warn when ``budget`` is less than one.

        :param budget: the simulator steps this ``learn`` call is to run
        """
        trunk, least, most = self.iteration_steps()
        sizes = (
            f"{trunk:,} trunk steps (n_steps x n_envs) plus {least:,} to {most:,} branch steps (N x K = {least:,} "
            f"branches of 1 to m = {self.rollout_length} steps each)"
        )
        if budget < trunk + least:
            warn_at_user_call(
                f"total_timesteps={budget:,} is less than one VineTRPO iteration, {sizes}: learn() runs whole "
                f"iterations, so it will run one, of {trunk + least:,} to {trunk + most:,} simulator steps. Raise "
                "total_timesteps, or shrink the iteration (n_steps, n_rollout_states, n_actions_per_state, rollout_length)."
            )
        elif self.verbose >= 1:
            print(
                f"VineTRPO: an iteration is {sizes}. learn() runs whole iterations: it stops at the end of the first "
                f"that reaches {budget:,} simulator steps, so it may run up to one iteration more than asked."
            )

    @property
    def uses_all_actions(self) -> bool:
        """Whether every action of a Discrete space is rolled out at each state (Eq. 15)."""
        return uses_all_actions(self.action_space, self.n_actions_per_state)

    def _branch_runner(self, env: VecEnv) -> BranchRunner:
        """The runner of the branch phase on ``env`` (kept across iterations: its workers keep their clone pools)."""
        runner = self.branch_runner
        config = BranchConfig(
            gamma=self.gamma,
            rollout_length=self.rollout_length,
            bootstrap=self.bootstrap_branches,
            common_random_numbers=self.common_random_numbers,
            branch_envs_per_worker=self.branch_envs_per_worker,
            backends=self.backends,
            sde_sample_freq=self.sde_sample_freq if self.use_sde else -1,
        )
        if runner is None or runner.venv is not env or runner.config != config:
            rng = runner.rng if runner is not None else np.random.default_rng(self.seed)
            if self.branch_pool is None:
                runner = self.branch_runner = BranchRunner(env, config, rng)
            else:  # the pool's own runner (on Ray: its re-runs of lost actors' waves logged as rollout/branch_retries)
                record = lambda key, value: self.logger.record(key, value)  # noqa: E731 - the logger is set by learn
                runner = self.branch_runner = self.branch_pool.branch_runner(env, config, rng, record)
        return runner

    # ------------------------------------------------------------------ one iteration: trunk -> rollout set -> branches

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Trunk rollouts (filling ``rollout_buffer`` as TRPO does, for the critic), with the rollout set's states
        snapshotted as the trunk visits them; then the K actions at each state and the branch rollouts, which give
        the :class:`~sb3_trpo_ext.vine.rollout_set.VineBatch` that ``train()`` takes its step on.

        :param env: the training environment
        :param callback: callback called at each trunk step
        :param rollout_buffer: buffer to fill with the trunk
        :param n_rollout_steps: trunk steps per environment
        :return: True if collection finished, False if a callback stopped it
        """
        runner = self._branch_runner(env)
        n_states = min(self.n_rollout_states, n_rollout_steps * env.num_envs)  # at most every visited state
        rollout_set = RolloutSet.choose(n_rollout_steps, env.num_envs, n_states, runner.rng)

        def take_snapshots(step: int, observations: Observation) -> None:
            for index in rollout_set.envs_at_step(step):
                rollout_set.add(step, index, runner.capture(index), observations, runner.frame_stacks(index))

        assert self._last_obs is not None
        take_snapshots(0, self._last_obs)  # type: ignore[arg-type]
        steps_before = self.num_timesteps
        if not collect(self, env, callback, rollout_buffer, n_rollout_steps, after_step=take_snapshots):
            return False
        trunk_steps = self.num_timesteps - steps_before

        observations = rollout_set.observations()
        actions, log_q = sample_branch_actions(
            self.policy, observations, self.n_actions_per_state, self.action_sampling, runner.rng, self.backends, self.mlp_plan
        )
        q_values, branch_steps = runner.run(self.policy, rollout_set, actions)
        self.num_timesteps += branch_steps
        _advance_progress_bars(callback, branch_steps)

        n_states, n_actions = q_values.shape
        self.vine_batch = VineBatch(
            observations=repeat_observations(obs_as_tensor(observations, self.device), n_actions),  # type: ignore[arg-type]
            actions=_flat_actions(th.as_tensor(actions, device=self.device), n_states * n_actions, self.action_space),
            q_values=th.as_tensor(q_values, device=self.device, dtype=th.float32),
            log_q=th.as_tensor(log_q, device=self.device, dtype=th.float32),
            all_actions=self.uses_all_actions,
        )
        self.logger.record("rollout/trunk_steps", trunk_steps)
        self.logger.record("rollout/branch_steps", branch_steps)
        self.logger.record("rollout/mean_q_value", float(q_values.mean()))
        return True

    def train(self) -> None:
        """One natural-gradient step on the vine's batch (Eq. 15 / 16), then the critic fitted on the trunk."""
        assert self.vine_batch is not None, "train() runs after collect_rollouts()"
        self._update(self.vine_batch, self._rollout_samples())

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "vine_batch", "branch_runner"]


def _advance_progress_bars(callback: BaseCallback, steps: int) -> None:
    """
    Move SB3's progress bar by the branch steps: it advances at each callback call (the trunk's steps) while its total
    is ``learn``'s budget, which counts the branches too, so without this it would stop short of its end.
    """
    callbacks = callback.callbacks if isinstance(callback, CallbackList) else [callback]
    for each in callbacks:
        if isinstance(each, CallbackList):
            _advance_progress_bars(each, steps)
        elif isinstance(each, ProgressBarCallback) and getattr(each, "pbar", None) is not None:
            each.pbar.update(steps)


def _warn_ignored_keywords(normalize_advantage: bool, sub_sampling_factor: int) -> None:
    """Say so when a keyword of TRPO's signature that the vine does not use was set to something else than its
    default (the user asked for something that does not happen)."""
    if not normalize_advantage:
        warn_at_user_call(
            "VineTRPO ignores normalize_advantage=False: its surrogate weighs the Q-values of K actions per rollout-set "
            "state (Eq. 15/16) and uses no advantages. Remove the keyword."
        )
    if sub_sampling_factor != 1:
        warn_at_user_call(
            f"VineTRPO ignores sub_sampling_factor={sub_sampling_factor}: its policy step uses the rollout set's states, "
            "not the trunk's samples. Set n_rollout_states for the size of the policy batch instead."
        )


def _check_vine_keywords(
    n_rollout_states: int, n_actions_per_state: int, rollout_length: int, branch_envs_per_worker: int, action_sampling: str
) -> None:
    check_int_at_least("n_rollout_states", n_rollout_states, 1, " The paper uses 125-625 for MuJoCo.")
    check_int_at_least("n_actions_per_state", n_actions_per_state, 2, " The paper uses K = 4.")
    check_int_at_least("rollout_length", rollout_length, 1, " The paper uses m = 50 or 100.")
    check_int_at_least("branch_envs_per_worker", branch_envs_per_worker, 1)
    if action_sampling not in ACTION_SAMPLING:
        raise ValueError(f"action_sampling must be one of {ACTION_SAMPLING}, got {action_sampling!r}.")


def _flat_actions(actions: th.Tensor, n_samples: int, action_space: spaces.Space) -> th.Tensor:
    """Actions as the rollout buffer holds them (and the distributions' ``log_prob`` takes them): flat per sample."""
    if isinstance(action_space, spaces.Discrete):
        return actions.reshape(n_samples).long()
    return actions.reshape(n_samples, -1).float()
