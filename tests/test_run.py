"""
Learning runs of TRPO, VineTRPO and NaturalPG on every supported action space, policy type and vectorized-env set-up,
the semantics of the fast ``collect_rollouts`` (against SB3's), and the trust region of every TRPO update.

The vine's ``num_timesteps`` (and ``learn``'s budget) counts its branch steps on top of the trunk's; its rollout
buffer, Monitors, VecNormalize statistics and callbacks see the trunk alone.
"""

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SMALL, TINY_CNN_KWARGS, SimulatorSteps, TinyEnv, branch_steps_range, budget, small
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO

ACTION_SPACE_ENVS: dict[str, Callable[[], gym.Env]] = {
    "box": lambda: gym.make("Pendulum-v1"),
    "discrete": lambda: gym.make("CartPole-v1"),
    "multidiscrete": lambda: TinyEnv(spaces.MultiDiscrete([3, 2])),
    "multibinary": lambda: TinyEnv(spaces.MultiBinary(3)),
}


# ---------------------------------------------------------------------------------------------------- helpers


def record_train_stats(model: Any) -> list[dict[str, Any]]:
    """Wrap ``model.train`` so that the values it logs are kept (SB3 dumps them only at the next iteration)."""
    stats: list[dict[str, Any]] = []
    original_train = model.train

    def train() -> None:
        original_train()
        stats.append(dict(model.logger.name_to_value))

    model.train = train
    return stats


def snapshot(model: Any) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def changed(before: dict[str, th.Tensor], model: Any, prefix: str) -> bool:
    after = model.policy.state_dict()
    names = [name for name in before if name.startswith(prefix)]
    assert names, f"no parameter named {prefix}*"
    return any(not th.equal(before[name], after[name]) for name in names)


def assert_learned(model: Any, before: dict[str, th.Tensor], stats: list[dict[str, Any]], n_updates: int) -> None:
    """Common expectations of a short learning run."""
    assert model._n_updates == n_updates
    assert len(stats) == n_updates
    for update in stats:
        for key in ("train/policy_objective", "train/value_loss", "train/kl_divergence_loss", "train/explained_variance"):
            assert math.isfinite(update[key]), (key, update)
        assert update["train/skipped_updates"] == 0
        if update["train/is_line_search_success"] == 1.0:
            assert 0.0 <= update["train/kl_divergence_loss"]
            if isinstance(model, TRPO):
                assert update["train/kl_divergence_loss"] <= model.max_kl + 1e-6
                assert update["train/surrogate_improvement"] > 0.0
    assert any(update["train/is_line_search_success"] == 1.0 for update in stats), "no policy step was accepted"
    assert changed(before, model, "action_net"), "the actor did not move"
    assert changed(before, model, "value_net"), "the critic did not move"


def assert_counted(model: Any, steps: SimulatorSteps, trunk_steps: int, iterations: int) -> None:
    """
    ``num_timesteps`` is every simulator step taken (the vine's branches included), and the Monitors saw the trunk's
    ``trunk_steps`` alone.
    """
    assert sum(model.env.get_attr("total_steps")) == trunk_steps
    assert model.num_timesteps == steps.count
    least, most = branch_steps_range(type(model), iterations)
    assert least <= model.num_timesteps - trunk_steps <= most, (model.num_timesteps, trunk_steps)


def collect_one_rollout(model: Any, callback: BaseCallback | None = None) -> bool:
    """Run the algorithm's ``collect_rollouts`` once, outside ``learn`` (the env is not reset if already running)."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, callback, reset_num_timesteps=False)
    return model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def buffer_batch(model: Any) -> tuple[Any, th.Tensor]:
    """Observations and actions of the whole rollout buffer as the policy takes them."""
    buffer = model.rollout_buffer
    n = buffer.buffer_size * buffer.n_envs
    if isinstance(buffer.observations, dict):
        obs = {key: value.reshape(n, *value.shape[2:]) for key, value in buffer.observations.items()}
    else:
        obs = buffer.observations.reshape(n, *buffer.observations.shape[2:])
    # cast as SB3's buffer does when it hands out samples (it stores actions in the action space's dtype)
    actions = th.as_tensor(buffer.actions.reshape(n, -1).astype(np.float32), device=model.device)
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.flatten().long()
    return obs_as_tensor(obs, model.device), actions


# ---------------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("space", list(ACTION_SPACE_ENVS))
def test_learn_moves_actor_and_critic_with_finite_stats_on_each_action_space(algorithm: type, space: str) -> None:
    steps = SimulatorSteps()
    env = make_vec_env(ACTION_SPACE_ENVS[space], n_envs=1, seed=0, wrapper_class=steps.wrapper)
    model = algorithm("MlpPolicy", env, **small(algorithm))
    stats = record_train_stats(model)
    before = snapshot(model)
    model.learn(budget(algorithm, 2, 64))
    assert_counted(model, steps, trunk_steps=128, iterations=2)
    if space == "box":  # Pendulum's episodes do not end within the vine's branches: every branch takes its 3 steps
        assert model.num_timesteps == 128 + branch_steps_range(algorithm, 2)[1]
    assert_learned(model, before, stats, n_updates=2)


@pytest.mark.parametrize("share_features_extractor", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize(
    ("policy", "observation", "policy_kwargs"),
    [
        pytest.param("MultiInputPolicy", "dict", {}, id="MultiInputPolicy-dict"),
        pytest.param("CnnPolicy", "image", TINY_CNN_KWARGS, id="CnnPolicy-image"),
    ],
)
def test_learn_works_with_dict_and_image_observation_policies(
    algorithm: type, policy: str, observation: str, policy_kwargs: dict, share_features_extractor: bool
) -> None:
    env = make_vec_env(lambda: TinyEnv(spaces.Discrete(3), observation=observation, episode_length=10), n_envs=1, seed=0)
    policy_kwargs = dict(policy_kwargs, share_features_extractor=share_features_extractor)
    model = algorithm(policy, env, policy_kwargs=policy_kwargs, **small(algorithm))
    stats = record_train_stats(model)
    before = snapshot(model)
    model.learn(budget(algorithm, 2, 64))
    assert_learned(model, before, stats, n_updates=2)
    if observation == "image":
        assert changed(before, model, "pi_features_extractor"), "the actor's CNN was not trained"


@pytest.mark.parametrize("sde_sample_freq", [-1, 4])
def test_learn_with_gsde_on_pendulum_moves_the_exploration_parameters(algorithm: type, sde_sample_freq: int) -> None:
    model = algorithm("MlpPolicy", "Pendulum-v1", use_sde=True, sde_sample_freq=sde_sample_freq, **small(algorithm))
    assert model.policy.use_sde
    stats = record_train_stats(model)
    before = snapshot(model)
    model.learn(budget(algorithm, 2, 64))
    assert_learned(model, before, stats, n_updates=2)
    assert changed(before, model, "log_std"), "gSDE's log_std did not move"
    assert all(math.isfinite(update["train/std"]) and update["train/std"] > 0 for update in stats)


def test_learn_with_subproc_vec_env_counts_both_envs(algorithm: type) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="fork"))
    try:
        model = algorithm("MlpPolicy", env, **small(algorithm))
        stats = record_train_stats(model)
        before = snapshot(model)
        model.learn(budget(algorithm, 2, 128))
        assert env.get_attr("total_steps") == [128, 128]  # the Monitors in the workers saw the trunk alone
        least, most = branch_steps_range(algorithm, 2)  # the vine's branches ran in the workers
        assert least <= model.num_timesteps - 256 <= most, model.num_timesteps
        assert (model.rollout_buffer.buffer_size, model.rollout_buffer.n_envs) == (64, 2)
        assert_learned(model, before, stats, n_updates=2)
        assert len(model.ep_info_buffer) > 0
    finally:
        env.close()


def test_learn_with_vec_normalize_trains_on_normalized_observations(algorithm: type) -> None:
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), clip_obs=5.0)
    model = algorithm("MlpPolicy", env, **small(algorithm))
    assert model.get_vec_normalize_env() is env
    obs_count, return_count = env.obs_rms.count, env.ret_rms.count
    stats = record_train_stats(model)
    before = snapshot(model)
    model.learn(budget(algorithm, 2, 128))
    assert_learned(model, before, stats, n_updates=2)
    # the running statistics were updated by the reset (2 observations) and every trunk step, never by a branch
    # (Pendulum's vine branches take all their 2 x 24 steps)
    assert model.num_timesteps == 256 + branch_steps_range(algorithm, 2)[1]
    assert env.obs_rms.count == pytest.approx(obs_count + 2 + 256, abs=1e-9)
    assert env.ret_rms.count == pytest.approx(return_count + 256, abs=1e-9)
    observations = model.rollout_buffer.observations
    assert np.abs(observations).max() <= 5.0 + 1e-6  # clipped: the buffer holds normalized observations
    assert abs(float(observations.mean())) < 1.0
    raw = env.get_original_obs()
    np.testing.assert_allclose(env.normalize_obs(raw), model._last_obs, rtol=1e-5, atol=1e-5)
    if algorithm is VineTRPO:  # the rollout-set states are trunk states, as the policy saw them there (normalized)
        visited = {row.tobytes() for row in observations.reshape(-1, 3)}
        rollout_set = model.vine_batch.observations.cpu().numpy()
        assert len(rollout_set) == 8 and all(row.tobytes() in visited for row in rollout_set)


@pytest.mark.parametrize("n_envs", [1, 3])
def test_learn_with_dummy_vec_env_fills_one_buffer_column_per_env(algorithm: type, n_envs: int) -> None:
    steps = SimulatorSteps()
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=0, vec_env_cls=DummyVecEnv, wrapper_class=steps.wrapper)
    model = algorithm("MlpPolicy", env, **small(algorithm))
    stats = record_train_stats(model)
    before = snapshot(model)
    model.learn(budget(algorithm, 2, 64 * n_envs))
    assert_counted(model, steps, trunk_steps=2 * 64 * n_envs, iterations=2)
    buffer = model.rollout_buffer
    assert (buffer.buffer_size, buffer.n_envs) == (64, n_envs)
    assert buffer.observations.shape == (64 * n_envs, 4)  # flattened by train()'s buffer.get()
    assert_learned(model, before, stats, n_updates=2)
    if n_envs > 1:  # the envs are seeded differently: each buffer column holds its own trajectory
        columns = buffer.observations.reshape(n_envs, 64, 4)  # swap_and_flatten put env-major order
        assert not np.array_equal(columns[0], columns[1])


# ---------------------------------------------------------------------------------------------------- rollouts vs SB3

ROLLOUT_CASES: dict[str, tuple[str, Callable[[], gym.Env], dict[str, Any]]] = {
    "box": ("MlpPolicy", lambda: gym.make("Pendulum-v1"), {}),
    "discrete": ("MlpPolicy", lambda: gym.make("CartPole-v1"), {}),
    "multidiscrete": ("MlpPolicy", lambda: TinyEnv(spaces.MultiDiscrete([3, 2])), {}),
    "multibinary": ("MlpPolicy", lambda: TinyEnv(spaces.MultiBinary(3)), {}),
    "dict": ("MultiInputPolicy", lambda: TinyEnv(spaces.Box(-1, 1, (2,)), observation="dict"), {}),
    "image": (
        "CnnPolicy",
        lambda: TinyEnv(spaces.Discrete(3), observation="image", episode_length=10),
        dict(policy_kwargs=TINY_CNN_KWARGS),
    ),
    "image-float32": (
        "CnnPolicy",
        lambda: TinyEnv(spaces.Discrete(3), observation="image", episode_length=10),
        dict(policy_kwargs=TINY_CNN_KWARGS, precision="float32"),
    ),
    "gsde": ("MlpPolicy", lambda: gym.make("Pendulum-v1"), dict(use_sde=True)),
}


@pytest.mark.parametrize("case", list(ROLLOUT_CASES))
def test_rollout_values_and_log_probs_equal_a_fresh_evaluate_actions(case: str) -> None:
    policy, make_env, kwargs = ROLLOUT_CASES[case]
    model = TRPO(policy, make_vec_env(make_env, n_envs=2, seed=1), **{**SMALL, **kwargs})
    model.learn(128)  # one update first, so that the rollout below uses a policy that is not the initial one
    assert collect_one_rollout(model)
    buffer = model.rollout_buffer
    assert buffer.full
    obs, actions = buffer_batch(model)
    with th.no_grad():
        values, log_probs, _ = model.policy.evaluate_actions(obs, actions)
    # a CNN policy's rollout runs in bfloat16 on a CPU with the units (precision="auto"): its 8-bit mantissa, not 24
    tolerance = 3e-2 if model.backends.precision == "bfloat16" else 1e-5
    np.testing.assert_allclose(buffer.values.reshape(-1), values.cpu().numpy().reshape(-1), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(
        buffer.log_probs.reshape(-1), log_probs.cpu().numpy().reshape(-1), rtol=tolerance, atol=tolerance
    )
    assert np.all(np.isfinite(buffer.advantages)) and np.all(np.isfinite(buffer.returns))
    np.testing.assert_allclose(buffer.returns, buffer.advantages + buffer.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["box", "discrete", "multidiscrete", "multibinary", "dict", "image"])
def test_rollout_actions_are_drawn_from_the_current_policy(case: str) -> None:
    """The fast sampler's actions have the policy's distribution (z-tests at 5 sigma on a skewed policy)."""
    policy, make_env, kwargs = ROLLOUT_CASES[case]
    model = TRPO(policy, make_vec_env(make_env, n_envs=2, seed=2), **{**SMALL, "n_steps": 256, **kwargs})
    with th.no_grad():  # a clearly non-uniform / off-centre policy, so that a sampler ignoring it would be caught
        bias = model.policy.action_net.bias
        bias.copy_(th.linspace(1.5, -1.5, bias.numel()))
        if isinstance(model.action_space, spaces.Box):
            model.policy.log_std.fill_(-1.0)
    assert collect_one_rollout(model)
    obs, actions = buffer_batch(model)
    n = len(actions)
    with th.no_grad():
        distribution = model.policy.get_distribution(obs)
    dists = distribution.distribution if isinstance(distribution.distribution, list) else [distribution.distribution]
    if isinstance(model.action_space, spaces.Box):
        normal = dists[0]
        residual = ((actions - normal.loc) / normal.scale).cpu().numpy()  # the buffer keeps the unclipped actions
        assert np.all(np.abs(residual.mean(axis=0)) < 5.0 / np.sqrt(n)), residual.mean(axis=0)
        assert np.all(np.abs(residual.var(axis=0) - 1.0) < 5.0 * np.sqrt(2.0 / n)), residual.var(axis=0)
        return
    if isinstance(model.action_space, spaces.MultiBinary):  # one Bernoulli per bit
        counts = [(dists[0].probs[:, i], actions[:, i] == 1) for i in range(actions.shape[1])]
    elif isinstance(model.action_space, spaces.Discrete):  # one Categorical
        counts = [(dists[0].probs[:, k], actions == k) for k in range(dists[0].probs.shape[1])]
    else:  # one Categorical per component
        counts = [
            (dist.probs[:, k], actions[:, i].long() == k) for i, dist in enumerate(dists) for k in range(dist.probs.shape[1])
        ]
    n_checked = 0
    for expected, observed in counts:
        expected = expected.double()
        sd = th.sqrt((expected * (1 - expected)).sum()).item()
        z = (observed.double().sum() - expected.sum()).item() / sd
        assert abs(z) < 5.0, (n_checked, z)
        n_checked += 1
    assert n_checked >= 2


class CountingEnv(gym.Env):
    """
    Observations count the steps of the episode; reward 1 each step; action 1 at the 3rd step terminates.

    Wrapped in ``TimeLimit(max_episode_steps=4)``, episodes end either by termination (3 steps) or by truncation
    (4 steps), so a rollout holds both kinds of episode ends.
    """

    observation_space = spaces.Box(0.0, 10.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return np.array([0.0, 1.0], dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._t += 1
        terminated = self._t == 3 and int(action) == 1
        return np.array([self._t, 1.0], dtype=np.float32), 1.0, terminated, False, {}


class StepRecorder(BaseCallback):
    """Keeps a copy of the raw rewards, dones and infos of every step."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []
        self.infos: list[list[dict]] = []

    def _on_step(self) -> bool:
        self.rewards.append(np.array(self.locals["rewards"], dtype=np.float64))
        self.dones.append(np.array(self.locals["dones"]))
        self.infos.append([dict(info) for info in self.locals["infos"]])
        return True


def make_counting_vec_env(n_envs: int = 2) -> Any:
    return make_vec_env(lambda: TimeLimit(CountingEnv(), max_episode_steps=4), n_envs=n_envs, seed=0)


def test_truncated_episodes_are_bootstrapped_with_the_terminal_value_and_terminated_ones_are_not() -> None:
    model = TRPO("MlpPolicy", make_counting_vec_env(), gamma=0.9, gae_lambda=0.8, **{**SMALL, "n_steps": 32})
    model.learn(64)  # fit the critic a little: V(terminal obs) clearly non-zero
    recorder = StepRecorder()
    previous_dones = np.array(model._last_episode_starts, dtype=np.float32)
    assert collect_one_rollout(model, recorder)
    buffer = model.rollout_buffer
    rewards, dones = np.stack(recorder.rewards), np.stack(recorder.dones)
    assert rewards.shape == (32, 2)

    expected = rewards.copy()
    n_truncated = n_terminated = 0
    for step, infos in enumerate(recorder.infos):
        for env_idx, info in enumerate(infos):
            if not dones[step, env_idx]:
                continue
            if info.get("TimeLimit.truncated", False):
                n_truncated += 1
                terminal_obs = th.as_tensor(info["terminal_observation"][None], device=model.device)
                with th.no_grad():
                    terminal_value = model.policy.predict_values(terminal_obs).item()
                expected[step, env_idx] += model.gamma * terminal_value
            else:
                n_terminated += 1
    assert n_truncated > 0 and n_terminated > 0, (n_truncated, n_terminated)
    assert np.abs(expected - rewards).max() > 1e-3  # the bootstrap is visible
    np.testing.assert_allclose(buffer.rewards, expected, rtol=1e-5, atol=1e-5)

    # episode starts: the first step follows the previous rollout, each next one follows the step before
    np.testing.assert_array_equal(buffer.episode_starts[0], previous_dones)
    np.testing.assert_array_equal(buffer.episode_starts[1:], dones[:-1].astype(np.float32))

    # GAE with the critic's value of the observation after the rollout
    with th.no_grad():
        last_values = model.policy.predict_values(obs_as_tensor(model._last_obs, model.device)).cpu().numpy().ravel()
    advantages = np.zeros_like(expected)
    last_gae = np.zeros(2)
    for step in reversed(range(32)):
        if step == 31:
            non_terminal, next_values = 1.0 - dones[-1], last_values
        else:
            non_terminal, next_values = 1.0 - buffer.episode_starts[step + 1], buffer.values[step + 1]
        delta = buffer.rewards[step] + model.gamma * next_values * non_terminal - buffer.values[step]
        last_gae = delta + model.gamma * model.gae_lambda * non_terminal * last_gae
        advantages[step] = last_gae
    np.testing.assert_allclose(buffer.advantages, advantages, rtol=1e-4, atol=1e-4)


def test_ep_info_buffer_gets_the_monitor_episode_infos_of_the_trunk(algorithm: type) -> None:
    model = algorithm("MlpPolicy", make_counting_vec_env(), **small(algorithm, n_steps=32))
    recorder = StepRecorder()
    model.learn(budget(algorithm, 1, 64), callback=recorder)  # the vine's branches often end their 3- or 4-step episodes
    assert model._n_updates == 1 and len(recorder.dones) == 32  # callbacks see the trunk steps alone
    n_episodes = int(np.stack(recorder.dones).sum())
    assert n_episodes > 0
    assert len(model.ep_info_buffer) == n_episodes
    episode_ends = [info["episode"] for infos in recorder.infos for info in infos if "episode" in info]
    assert list(model.ep_info_buffer) == episode_ends
    for episode in model.ep_info_buffer:
        assert set(episode) >= {"r", "l", "t"}
        assert episode["l"] in (3, 4)
        assert episode["r"] == pytest.approx(float(episode["l"]))  # reward 1 per step


# ---------------------------------------------------------------------------------------------------- trust region


def torch_distributions(model: Any, obs: Any) -> list[th.distributions.Distribution]:
    """The policy's torch distributions on ``obs`` (SB3 reuses one distribution object: take its contents now)."""
    with th.no_grad():
        distribution = model.policy.get_distribution(obs).distribution
    return list(distribution) if isinstance(distribution, list) else [distribution]


def whole_distribution_kl(old: list[th.distributions.Distribution], new: list[th.distributions.Distribution]) -> float:
    """Mean over states of KL(old || new) between whole action distributions (summed over action dimensions)."""
    per_state = 0.0
    for p, q in zip(old, new, strict=True):
        kl = th.distributions.kl_divergence(p, q)
        per_state = per_state + (kl.sum(dim=-1) if kl.dim() > 1 else kl)
    return float(per_state.mean())


class KLMeasuringTRPO(TRPO):
    """TRPO that measures the KL of each update itself, on the whole rollout batch."""

    def _setup_model(self) -> None:
        super()._setup_model()
        self.measured: list[tuple[float, dict[str, Any]]] = []

    def train(self) -> None:
        obs, _ = buffer_batch(self)
        before = {name: value.detach().clone() for name, value in self.policy.state_dict().items()}
        super().train()
        logged = dict(self.logger.name_to_value)
        after = {name: value.detach().clone() for name, value in self.policy.state_dict().items()}
        new = torch_distributions(self, obs)
        self.policy.load_state_dict(before)
        old = torch_distributions(self, obs)
        self.policy.load_state_dict(after)
        self.measured.append((whole_distribution_kl(old, new), logged))


def assert_inside_trust_region(model: KLMeasuringTRPO, n_updates: int) -> None:
    assert len(model.measured) == n_updates
    measured = [kl for kl, _ in model.measured]
    assert max(measured) <= model.max_kl + 1e-6, measured
    n_accepted = 0
    for kl, logged in model.measured:
        assert kl <= model.max_kl + 1e-6, (kl, logged)
        if logged["train/is_line_search_success"] == 1.0:
            n_accepted += 1
            assert kl > 0.0
            # the logged KL (after the step) is the KL we measure: the critic fit leaves the actor alone
            assert kl == pytest.approx(logged["train/kl_divergence_loss"], rel=1e-3, abs=1e-7)
        else:
            assert kl == 0.0  # a rejected step restores the old parameters exactly
    assert n_accepted >= 2


KL_ENVS: dict[str, Callable[[], gym.Env]] = {
    "CartPole-v1": lambda: gym.make("CartPole-v1"),
    "Pendulum-v1": lambda: gym.make("Pendulum-v1"),
    # three Gaussian action dimensions: a KL averaged (not summed) over dimensions would overshoot up to 3x
    "TinyEnv-Box3": lambda: TinyEnv(spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)),
}


@pytest.mark.parametrize(
    ("env_name", "target_kl"),
    [("CartPole-v1", 0.01), ("Pendulum-v1", 0.01), ("Pendulum-v1", 0.002), ("TinyEnv-Box3", 0.01)],
)
def test_every_trpo_update_stays_inside_the_trust_region(env_name: str, target_kl: float) -> None:
    env = make_vec_env(KL_ENVS[env_name], n_envs=2, seed=3)
    model = KLMeasuringTRPO("MlpPolicy", env, target_kl=target_kl, n_steps=64, batch_size=64, n_critic_updates=2, seed=3)
    model.learn(4 * 128)
    assert_inside_trust_region(model, n_updates=4)


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_every_trpo_update_with_a_cnn_policy_stays_inside_the_trust_region(share_features_extractor: bool) -> None:
    """
    The KL bound must hold for the policy that ``train()`` leaves behind, i.e. also after the critic fit. With a
    features extractor shared by actor and critic (SB3's default for CnnPolicy), fitting the critic moves the CNN
    and with it the actor.
    """
    env = make_vec_env(lambda: TinyEnv(spaces.Discrete(3), observation="image", episode_length=10), n_envs=2, seed=0)
    policy_kwargs = dict(TINY_CNN_KWARGS, share_features_extractor=share_features_extractor)
    kwargs = dict(n_steps=64, batch_size=32, n_critic_updates=5, learning_rate=3e-3, seed=0)
    model = KLMeasuringTRPO("CnnPolicy", env, policy_kwargs=policy_kwargs, **kwargs)
    model.learn(3 * 128)
    assert_inside_trust_region(model, n_updates=3)


def test_natural_pg_kl_step_moves_by_about_target_kl() -> None:
    """NaturalPG's KL-normalized step meets the quadratic KL model: the measured KL is of the order of target_kl."""
    env = make_vec_env("CartPole-v1", n_envs=2, seed=4)
    model = NaturalPG("MlpPolicy", env, target_kl=0.01, n_steps=64, batch_size=64, n_critic_updates=2, seed=4)
    measured: list[float] = []
    original_train = model.train

    def train() -> None:
        obs, _ = buffer_batch(model)
        old = torch_distributions(model, obs)
        original_train()
        new = torch_distributions(model, obs)
        measured.append(whole_distribution_kl(old, new))

    model.train = train
    model.learn(2 * 128)
    assert len(measured) == 2
    for kl in measured:
        assert 0.001 < kl < 0.1, measured


def test_add_to_plain_buffer_fills_the_buffer_as_rollout_buffer_add_does() -> None:
    """The one direct write of SB3's RolloutBuffer fields gives what SB3's own ``add`` gives."""
    from stable_baselines3.common.buffers import RolloutBuffer

    from sb3_trpo_ext.common.rollouts import add_to_plain_buffer

    obs_space, action_space = spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (2, 2), np.float32)
    ours, sb3 = (RolloutBuffer(4, obs_space, action_space, n_envs=2) for _ in range(2))
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs, actions = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(2, 2, 2)).astype(np.float32)
        rewards, starts = rng.normal(size=2).astype(np.float32), rng.integers(0, 2, 2).astype(np.float32)
        values, log_probs = rng.normal(size=2).astype(np.float32), rng.normal(size=2).astype(np.float32)
        add_to_plain_buffer(ours, obs, actions, rewards, starts, values, log_probs)
        sb3.add(obs, actions, rewards, starts, th.as_tensor(values).reshape(2, 1), th.as_tensor(log_probs))
    assert ours.full and sb3.full and ours.pos == sb3.pos == 4
    for name in ("observations", "actions", "rewards", "episode_starts", "values", "log_probs"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(sb3, name), err_msg=name)
