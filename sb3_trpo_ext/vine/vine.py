"""TRPO, vine method: Schulman et al. (2015), https://arxiv.org/abs/1502.05477, Section 5.2."""

from typing import Any, ClassVar, Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.base import PolicyBatch
from sb3_trpo_ext.common.rollouts import collect_rollouts_fast
from sb3_trpo_ext.common.validation import check_int_at_least
from sb3_trpo_ext.trpo.trpo import TRPO
from sb3_trpo_ext.vine.branches import BranchObservationTransform, BranchWorkers
from sb3_trpo_ext.vine.estimators import all_actions_surrogate, importance_sampling_surrogate
from sb3_trpo_ext.vine.rollout_set import RolloutSet, run_branch_rollouts, sample_branch_actions

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
    equal cost (``rollout/trunk_steps`` and ``rollout/branch_steps`` are logged).

    Paper defaults: MuJoCo (Table 2): ``rollout_length`` 50 (Swimmer) / 100 (Hopper, Walker), ``n_actions_per_state``
    4, Q-values per batch 500 / 2500 (``n_rollout_states`` = 125 / 625), ``action_sampling="policy"``. Atari (Table 3):
    about 4 rollouts per state, ``action_sampling="uniform"``.

    :param policy: the policy model (``MlpPolicy``, ``CnnPolicy``, ``MultiInputPolicy``) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str); its envs must be snapshottable
        (see :mod:`sb3_trpo_ext.common.snapshot`)
    :param n_steps: trunk steps per environment per iteration
    :param n_rollout_states: number ``N`` of rollout-set states per iteration (at most ``n_steps * n_envs``)
    :param n_actions_per_state: number ``K`` of actions per state (for Discrete spaces, ``K >= n`` rolls out every
        action once and uses Eq. (15))
    :param rollout_length: length ``m`` of each branch rollout
    :param action_sampling: ``"policy"`` (q = pi) or ``"uniform"`` (q uniform; discrete spaces only)
    :param bootstrap_branches: add ``gamma^m V(s_m)`` at the cut of a branch that did not end
    :param common_random_numbers: share simulator randomness and policy noise across the K branches of a state
    :param branch_envs_per_worker: clones of its env each worker keeps for branches; more branches than
        ``n_envs * branch_envs_per_worker`` run in successive waves (memory vs batching)
    :param kwargs: every other keyword of :class:`~sb3_trpo_ext.trpo.TRPO` (``learning_rate``, ``batch_size``,
        ``gamma``, ``target_kl``, ``cg_max_steps``, ``cg_damping``, line search, critic, ...)
    """

    policy_aliases: ClassVar = TRPO.policy_aliases

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        n_steps: int = 1024,
        n_rollout_states: int = 64,
        n_actions_per_state: int = 4,
        rollout_length: int = 50,
        action_sampling: Literal["policy", "uniform"] = "policy",
        bootstrap_branches: bool = True,
        common_random_numbers: bool = True,
        branch_envs_per_worker: int = 256,
        **kwargs: Any,
    ) -> None:
        check_int_at_least("n_rollout_states", n_rollout_states, 1, " The paper uses 125-625 for MuJoCo.")
        check_int_at_least("n_actions_per_state", n_actions_per_state, 2, " The paper uses K = 4.")
        check_int_at_least("rollout_length", rollout_length, 1, " The paper uses m = 50 or 100.")
        check_int_at_least("branch_envs_per_worker", branch_envs_per_worker, 1)
        if action_sampling not in ACTION_SAMPLING:
            raise ValueError(f"action_sampling must be one of {ACTION_SAMPLING}, got {action_sampling!r}.")
        self.n_rollout_states = n_rollout_states
        self.n_actions_per_state = n_actions_per_state
        self.rollout_length = rollout_length
        self.action_sampling = action_sampling
        self.bootstrap_branches = bootstrap_branches
        self.common_random_numbers = common_random_numbers
        self.branch_envs_per_worker = branch_envs_per_worker
        super().__init__(policy, env, n_steps=n_steps, **kwargs)
        if (
            getattr(self, "action_space", None) is not None
            and action_sampling == "uniform"
            and isinstance(self.action_space, spaces.Box)
        ):
            raise ValueError("action_sampling='uniform' needs a discrete action space; use 'policy' for Box actions.")
        if self.env is not None:
            if n_rollout_states > n_steps * self.n_envs:
                raise ValueError(
                    f"n_rollout_states={n_rollout_states} exceeds the trunk's visited states "
                    f"(n_steps * n_envs = {n_steps * self.n_envs}); lower it or raise n_steps."
                )
            self._check_env(self.env)

    def _check_env(self, env: VecEnv) -> None:
        """Fail at construction, with the fix, when branches cannot be run on ``env``."""
        BranchObservationTransform(env)
        BranchWorkers(env).check()

    @property
    def uses_all_actions(self) -> bool:
        """Whether every action of a Discrete space is rolled out at each state (Eq. 15)."""
        return isinstance(self.action_space, spaces.Discrete) and self.n_actions_per_state >= int(self.action_space.n)

    # ------------------------------------------------------------------ rollouts

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Trunk rollouts (filling ``rollout_buffer`` as TRPO does, for the critic), snapshots of the rollout set taken
        on the way, then the branch rollouts from it.

        :param env: the training environment
        :param callback: callback called at each trunk step
        :param rollout_buffer: buffer to fill with the trunk
        :param n_rollout_steps: trunk steps per environment
        :return: True if collection finished, False if a callback stopped it
        """
        workers, transform = self._branch_machinery(env)
        rollout_set = RolloutSet.choose(n_rollout_steps, env.num_envs, self.n_rollout_states, self._vine_rng())

        def snapshot_chosen_states(step: int) -> None:
            assert self._last_obs is not None
            for index in rollout_set.envs_at_step(step):
                rollout_set.add(step, index, workers.capture(index), self._last_obs, transform.frame_stacks(index))

        steps_before = self.num_timesteps
        if not collect_rollouts_fast(self, env, callback, rollout_buffer, n_rollout_steps, snapshot_chosen_states):
            return False
        trunk_steps = self.num_timesteps - steps_before

        observations = rollout_set.observations()
        actions, log_q = sample_branch_actions(self, observations)
        q_values, branch_steps = run_branch_rollouts(self, workers, transform, rollout_set, actions)
        self.num_timesteps += branch_steps

        n_states, n_actions = q_values.shape
        self._vine_batch = PolicyBatch(
            observations=_repeat_observations(obs_as_tensor(observations, self.device), n_actions),  # type: ignore[arg-type]
            actions=_flat_actions(th.as_tensor(actions, device=self.device), n_states * n_actions, self.action_space),
            weights=th.as_tensor(q_values, device=self.device, dtype=th.float32).reshape(-1),
        )
        self._vine_log_q = th.as_tensor(log_q, device=self.device, dtype=th.float32)
        self.logger.record("rollout/trunk_steps", trunk_steps)
        self.logger.record("rollout/branch_steps", branch_steps)
        self.logger.record("rollout/mean_q_value", float(q_values.mean()))
        return True

    def _branch_machinery(self, env: VecEnv) -> tuple[BranchWorkers, BranchObservationTransform]:
        """The workers (with their pools of branch envs, kept across iterations) and the VecEnv transforms."""
        cached = getattr(self, "_branches", None)
        if cached is None or cached[0] is not env:
            cached = (env, BranchWorkers(env), BranchObservationTransform(env))
            self._branches = cached
        return cached[1], cached[2]

    def _vine_rng(self) -> np.random.Generator:
        if not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    # ------------------------------------------------------------------ surrogate

    def _policy_batch(self, observations: PyTorchObs, actions: th.Tensor, advantages: th.Tensor) -> PolicyBatch:
        """The rollout set's (state, action, Q) triples, not the trunk's samples."""
        return self._vine_batch

    def _surrogate_objective(self, log_prob: th.Tensor, old_log_prob: th.Tensor, batch: PolicyBatch) -> th.Tensor:
        """Eq. (15) when every action of a Discrete space was rolled out, Eq. (16) otherwise."""
        n_states, n_actions = self._vine_log_q.shape
        log_prob = log_prob.reshape(n_states, n_actions)
        q_values = batch.weights.reshape(n_states, n_actions)
        if self.uses_all_actions:
            return all_actions_surrogate(log_prob, q_values)
        return importance_sampling_surrogate(log_prob, self._vine_log_q, q_values)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_vine_batch", "_vine_log_q", "_rng", "_branches"]


def _repeat_observations(observations: PyTorchObs, times: int) -> PyTorchObs:
    if isinstance(observations, dict):
        return {key: value.repeat_interleave(times, dim=0) for key, value in observations.items()}
    return observations.repeat_interleave(times, dim=0)


def _flat_actions(actions: th.Tensor, n_samples: int, action_space: spaces.Space) -> th.Tensor:
    """Actions as the rollout buffer holds them (and the distributions' ``log_prob`` takes them): flat per sample."""
    if isinstance(action_space, spaces.Discrete):
        return actions.reshape(n_samples).long()
    return actions.reshape(n_samples, -1).float()
