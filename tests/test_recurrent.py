"""RecurrentTRPO and RecurrentNaturalPG: the step's math on padded sequences, the LSTM states, save/load, errors."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.env_util import make_vec_env
from torch import nn
from torch.func import functional_call

from sb3_trpo_ext import TRPO, RecurrentNaturalPG, RecurrentTRPO, VineTRPO
from sb3_trpo_ext.common.fisher import actor_parameters, make_fisher_vector_product
from sb3_trpo_ext.common.natural_gradient import natural_direction
from sb3_trpo_ext.recurrent.sequence_batch import SequenceBatch

TINY = dict(lstm_hidden_size=3, net_arch=[], enable_critic_lstm=True)


def tiny_policy(seed: int = 0, action_space: spaces.Space | None = None) -> RecurrentActorCriticPolicy:
    th.manual_seed(seed)
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    policy = RecurrentActorCriticPolicy(
        observation_space,
        action_space or spaces.Discrete(3),
        lambda _: 1e-3,
        **TINY,  # type: ignore[arg-type]
    )
    return policy


def sequence_batch(lengths: list[int], max_len: int, seed: int = 1, garbage_padding: bool = True) -> SequenceBatch:
    """Sequences of the given lengths padded to ``max_len``; an episode start inside the first sequence."""
    generator = th.Generator().manual_seed(seed)
    n = len(lengths)
    observations = th.randn(n, max_len, 2, generator=generator, dtype=th.float32)
    actions = th.randint(0, 3, (n, max_len), generator=generator)
    advantages = th.randn(n, max_len, generator=generator, dtype=th.float32)
    mask = th.zeros(n, max_len, dtype=th.float32)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1.0
    if not garbage_padding:
        observations, actions, advantages = observations * mask[..., None], actions * mask.long(), advantages * mask
    starts = th.zeros(n, max_len, dtype=th.float32)
    starts[0, 2] = 1.0
    hidden = th.randn(1, n, 3, generator=generator, dtype=th.float32)
    cell = th.randn(1, n, 3, generator=generator, dtype=th.float32)
    return SequenceBatch(
        observations.reshape(n * max_len, 2), actions.reshape(-1), advantages.reshape(-1), (hidden, cell),
        starts.reshape(-1), mask.reshape(-1),
    )  # fmt: skip


def padded(batch: SequenceBatch, extra: int, seed: int = 7) -> SequenceBatch:
    """The same sequences with ``extra`` more padded steps each, holding random values (the mask says 0)."""
    generator = th.Generator().manual_seed(seed)
    n = batch.n_sequences

    def grow(values: th.Tensor, noise: th.Tensor) -> th.Tensor:
        return th.cat([values.reshape(n, -1, *values.shape[1:]), noise], dim=1).reshape(-1, *values.shape[1:])

    return SequenceBatch(
        grow(batch.observations, th.randn(n, extra, 2, generator=generator, dtype=th.float32)),  # type: ignore[arg-type]
        grow(batch.actions, th.randint(0, 3, (n, extra), generator=generator)),
        grow(batch.advantages, th.randn(n, extra, generator=generator, dtype=th.float32)),
        batch.lstm_states,
        grow(batch.episode_starts, th.ones(n, extra, dtype=th.float32)),
        grow(batch.mask, th.zeros(n, extra, dtype=th.float32)),
    )


class Logits(nn.Module):
    def __init__(self, policy: RecurrentActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, observations: th.Tensor, states: tuple[th.Tensor, th.Tensor], starts: th.Tensor) -> th.Tensor:
        return self.policy.get_distribution(observations, states, starts)[0].distribution.logits


def test_fisher_vector_product_on_sequences_is_the_hessian_of_the_masked_mean_kl() -> None:
    policy = tiny_policy()
    batch = sequence_batch([5, 3, 1], max_len=5)
    params = actor_parameters(policy, batch.distribution(policy))
    assert any(p is policy.lstm_actor.weight_hh_l0 for p in params)  # the LSTM is part of the actor
    fisher = make_fisher_vector_product(
        "double-backprop", policy, batch.observations, params, batch.distribution(policy), "float32", batch.state_mean
    )
    size = sum(p.numel() for p in params)
    ours = th.stack([fisher(column) for column in th.eye(size)], dim=1)

    # independently: the Hessian of the masked mean KL(old || new) of a flat-parameter function, by hand
    logits_of = Logits(policy)
    names = {id(p): name for name, p in logits_of.named_parameters()}
    shapes = [p.shape for p in params]
    flat_old = th.cat([p.detach().reshape(-1) for p in params])
    with th.no_grad():
        old_log_probs = th.log_softmax(logits_of(batch.observations, batch.lstm_states, batch.episode_starts), -1)
    real = batch.mask > 0

    def masked_mean_kl(flat: th.Tensor) -> th.Tensor:
        tensors, offset = {}, 0
        for p, shape in zip(params, shapes, strict=True):
            tensors[names[id(p)]] = flat[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        logits = functional_call(logits_of, tensors, (batch.observations, batch.lstm_states, batch.episode_starts))
        kl = (old_log_probs.exp() * (old_log_probs - th.log_softmax(logits, -1))).sum(-1)
        return kl[real].sum() / real.sum()

    explicit = th.autograd.functional.hessian(masked_mean_kl, flat_old)
    assert ours.shape == (size, size) and size > 80
    assert th.allclose(ours, explicit, atol=1e-5, rtol=1e-4)
    # the padding counts for nothing: the unmasked mean's Hessian is another matrix
    unmasked = SequenceBatch(**{**batch.__dict__, "mask": th.ones_like(batch.mask)})
    other = make_fisher_vector_product(
        "double-backprop", policy, batch.observations, params, unmasked.distribution(policy), "float32", unmasked.state_mean
    )
    assert not th.allclose(other(th.ones(size, dtype=th.float32)), fisher(th.ones(size, dtype=th.float32)))


def test_extra_padding_changes_neither_the_direction_nor_the_measured_step() -> None:
    policy = tiny_policy()
    batch = sequence_batch([4, 2, 3], max_len=4)
    longer = padded(batch, extra=3)
    found = [natural_direction(policy, b, "double-backprop", 0.1, 10) for b in (batch, longer)]
    assert found[0].failure is None and found[1].failure is None
    assert found[0].objective == pytest.approx(found[1].objective, abs=1e-6)
    assert th.allclose(found[0].gradient, found[1].gradient, atol=1e-6)
    assert th.allclose(found[0].direction, found[1].direction, atol=1e-5)  # type: ignore[arg-type]
    assert th.allclose(found[0].fisher_direction, found[1].fisher_direction, atol=1e-5)  # type: ignore[arg-type]
    # a step: the surrogate and the mean KL the line search measures are the same
    with th.no_grad():
        offset = 0
        for p in found[0].params:
            p += 0.3 * found[0].direction[offset : offset + p.numel()].view_as(p)  # type: ignore[index]
            offset += p.numel()
    (objective, kl), (objective_longer, kl_longer) = found[0].evaluate(), found[1].evaluate()  # type: ignore[misc]
    assert kl > 1e-4 and kl == pytest.approx(kl_longer, rel=1e-5) and objective == pytest.approx(objective_longer, rel=1e-5)


def test_episode_start_inside_a_sequence_resets_the_lstm_state() -> None:
    policy = tiny_policy()
    batch = sequence_batch([5], max_len=5)  # an episode starts at step 2
    with th.no_grad():
        logits = batch.distribution(policy).distribution.logits
        # steps 2..4 from a zero state, as a sequence of their own
        fresh = SequenceBatch(
            batch.observations[2:], batch.actions[2:], batch.advantages[2:],
            (th.zeros(1, 1, 3, dtype=th.float32), th.zeros(1, 1, 3, dtype=th.float32)),
            th.zeros(3, dtype=th.float32), th.ones(3, dtype=th.float32),
        )  # fmt: skip
        fresh_logits = fresh.distribution(policy).distribution.logits
        no_start = SequenceBatch(**{**batch.__dict__, "episode_starts": th.zeros_like(batch.episode_starts)})
        carried = no_start.distribution(policy).distribution.logits
    assert th.allclose(logits[2:], fresh_logits, atol=1e-6)
    assert not th.allclose(carried[2:], fresh_logits, atol=1e-3)  # without the reset, the state carries over
    assert th.allclose(logits[:2], carried[:2], atol=1e-6)


def test_fisher_subsample_takes_whole_sequences() -> None:
    batch = sequence_batch([4, 2, 3, 4], max_len=4)
    chosen = batch.states(th.tensor([5, 4, 13, 1]))  # rows of sequences 1, 1, 3, 0: one sequence's worth
    assert chosen.n_sequences == 1 and th.equal(chosen.observations, batch.observations[4:8])  # type: ignore[index]
    assert th.equal(chosen.lstm_states[0], batch.lstm_states[0][:, [1]]) and th.equal(chosen.mask, batch.mask[4:8])
    two = batch.states(th.tensor([13, 9, 5, 1, 0, 2, 3, 4]))
    assert two.n_sequences == 2 and th.equal(two.mask, th.cat([batch.mask[12:16], batch.mask[8:12]]))


def test_from_rollout_normalizes_advantages_over_real_steps_and_subsamples_sequences() -> None:
    batch = sequence_batch([4, 2, 3], max_len=4)
    made = SequenceBatch.from_rollout(
        batch.observations, batch.actions, batch.advantages, batch.lstm_states, batch.episode_starts, batch.mask
    )
    real = made.mask > 0
    assert made.advantages[real].mean().abs() < 1e-6 and made.advantages[real].std() == pytest.approx(1.0, abs=1e-6)
    assert th.all(made.advantages[~real] == 0)
    every_other = SequenceBatch.from_rollout(
        batch.observations, batch.actions, batch.advantages, batch.lstm_states, batch.episode_starts, batch.mask, 2, False
    )
    assert every_other.n_sequences == 2 and th.equal(every_other.advantages, batch.advantages[[0, 1, 2, 3, 8, 9, 10, 11]])


class Countdown(gym.Env):
    """Observation: a flag at the first step only; reward 1 for action 1 at the last step of 4: needs memory."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.ones(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.zeros(1, np.float32), float(self.t == 4 and action == 1), self.t == 4, False, {}


@pytest.mark.parametrize("cls", [RecurrentTRPO, RecurrentNaturalPG])
def test_learn_logs_the_feed_forward_keys_and_stores_the_states_each_step_started_from(cls: type) -> None:
    env = make_vec_env(Countdown, n_envs=2, seed=0)
    model = cls("MlpLstmPolicy", env, n_steps=8, batch_size=8, seed=0, policy_kwargs=dict(lstm_hidden_size=4, net_arch=[]))
    model.learn(32)
    logged = model.logger.name_to_value
    assert {"train/kl_divergence_loss", "train/value_loss", "train/explained_variance", "train/n_updates"} <= set(logged)
    assert model.backends.fisher == "double-backprop" and model.skipped_updates == 0
    # a rollout at the trained parameters: each step's buffer row holds the state the step started from, so the
    # stored state at step t+1 is the policy's state after step t (replayed here from the stored state at step t)
    _, callback = model._setup_learn(16, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, 8)
    buffer = model.rollout_buffer
    hidden, cell = th.as_tensor(buffer.hidden_states_pi), th.as_tensor(buffer.cell_states_pi)  # (step, layer, env, hidden)
    observations, starts = th.as_tensor(buffer.observations), th.as_tensor(buffer.episode_starts)
    assert starts.sum() >= 4  # episodes of 4 steps: the states were reset on the way
    with th.no_grad():
        for env_index in range(2):
            for t in range(7):
                state = (hidden[t][:, [env_index]], cell[t][:, [env_index]])
                obs, start = observations[t, [env_index]], starts[t, [env_index]]
                _, after = model.policy.get_distribution(obs, state, start)
                assert th.allclose(after[0][:, 0], hidden[t + 1][:, env_index], atol=1e-6)


def test_save_load_keeps_predictions_and_states(tmp_path) -> None:
    model = RecurrentTRPO(
        "MlpLstmPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0, policy_kwargs=dict(lstm_hidden_size=8)
    )
    model.learn(64)
    observations = np.random.default_rng(0).normal(size=(6, 3, 4)).astype(np.float32)

    def replay(m: RecurrentTRPO) -> tuple[list[np.ndarray], list[np.ndarray]]:
        state, actions, states = None, [], []
        for t, obs in enumerate(observations):
            action, state = m.predict(obs, state=state, episode_start=np.full(3, t == 0), deterministic=True)
            actions.append(action)
            states.append(state[0])  # type: ignore[index]
        return actions, states

    before = replay(model)
    model.save(tmp_path / "model")
    loaded = RecurrentTRPO.load(tmp_path / "model")
    after = replay(loaded)
    assert all(np.array_equal(a, b) for a, b in zip(before[0], after[0], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(before[1], after[1], strict=True))
    assert not np.allclose(before[1][0], before[1][-1])  # the state moves
    assert isinstance(loaded.policy, RecurrentActorCriticPolicy) and loaded.policy.lstm_actor.hidden_size == 8


def test_feed_forward_policy_and_buffer_are_refused_with_the_fix() -> None:
    from stable_baselines3.common.buffers import RolloutBuffer
    from stable_baselines3.common.policies import ActorCriticPolicy

    with pytest.raises(TypeError, match="for a feed-forward policy use TRPO"):
        RecurrentTRPO(ActorCriticPolicy, "CartPole-v1")
    with pytest.raises(ValueError, match="MlpLstmPolicy"):
        RecurrentNaturalPG("MlpPolicy", "CartPole-v1")
    with pytest.raises(ValueError, match="recurrent rollout buffer"):
        RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", rollout_buffer_class=RolloutBuffer)


def test_vine_trpo_with_a_recurrent_policy_names_recurrent_trpo() -> None:
    with pytest.raises(ValueError, match=r"use sb3_trpo_ext\.RecurrentTRPO\('MlpLstmPolicy', env\)"):
        VineTRPO("MlpLstmPolicy", "CartPole-v1")


def test_episode_starts_at_sequence_starts_run_in_one_lstm_call_with_the_same_result() -> None:
    policy = tiny_policy()
    batch = sequence_batch([4, 2, 3], max_len=4)
    batch.episode_starts = th.zeros_like(batch.episode_starts)
    batch.episode_starts[[0, 8]] = 1.0  # sequences 0 and 2 start episodes: their stored states are reset
    calls = []
    hook = policy.lstm_actor.register_forward_hook(lambda *_: calls.append(1))
    with th.no_grad():
        folded = batch.distribution(policy).distribution.logits
        n_folded = len(calls)
        stepwise = policy.get_distribution(batch.observations, batch.lstm_states, batch.episode_starts)[0].distribution.logits
    hook.remove()
    assert n_folded == 1 and len(calls) == 1 + 4  # sb3-contrib's loop: one call per step
    assert th.allclose(folded, stepwise, atol=1e-6)


@pytest.mark.parametrize(
    "policy, env_id, kwargs",
    [
        (
            "CnnLstmPolicy",
            "image",
            dict(policy_kwargs=dict(lstm_hidden_size=4, features_extractor_kwargs=dict(features_dim=8))),
        ),
        (
            "CnnLstmPolicy",
            "image",
            dict(policy_kwargs=dict(enable_critic_lstm=False, lstm_hidden_size=4, share_features_extractor=False)),
        ),
        ("MlpLstmPolicy", "Pendulum-v1", dict(use_sde=True, sde_sample_freq=4)),
        ("MlpLstmPolicy", "box2x2", dict(policy_kwargs=dict(shared_lstm=True, enable_critic_lstm=False, lstm_hidden_size=4))),
    ],
    ids=["cnn", "cnn-separate-extractors", "gsde", "box-2x2-shared-lstm"],
)
def test_the_peer_cases_without_ppo_keywords_learn(policy: str, env_id: str, kwargs: dict) -> None:
    from stable_baselines3.common.envs import FakeImageEnv
    from stable_baselines3.common.evaluation import evaluate_policy

    class Box2x2(gym.Env):
        observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = spaces.Box(-1.0, 1.0, (2, 2), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return (
                self.observation_space.sample(),
                float(-np.abs(action).sum()),
                bool(self.np_random.random() > 0.8),
                False,
                {},
            )

    env: gym.Env | str = {"image": FakeImageEnv(screen_height=40, screen_width=40, n_channels=1), "box2x2": Box2x2()}.get(
        env_id, env_id
    )
    model = RecurrentTRPO(policy, env, n_steps=16, batch_size=16, seed=0, **kwargs).learn(32)
    assert model.skipped_updates == 0 and model.logger.name_to_value["train/is_line_search_success"] in (0.0, 1.0)
    evaluate_policy(model, model.get_env(), n_eval_episodes=1, warn=False)


class Ticker(gym.Env):
    """Observation ``t / 10``, reward 1 at every step; never terminates (a TimeLimit truncates it)."""

    observation_space = spaces.Box(0.0, 10.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.full(1, self.t / 10, np.float32), 1.0, False, False, {}


def test_truncated_episodes_are_bootstrapped_from_the_envs_own_critic_state() -> None:
    from gymnasium.wrappers import TimeLimit
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    env = make_vec_env(lambda: TimeLimit(Ticker(), 3), n_envs=2, seed=0)
    model = RecurrentTRPO(
        "MlpLstmPolicy", env, n_steps=6, batch_size=12, gamma=0.9, seed=0, policy_kwargs=dict(lstm_hidden_size=4)
    )
    _, callback = model._setup_learn(12, None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, 6)
    buffer, policy = model.rollout_buffer, model.policy
    terminal = th.full((1, 1), 0.3)
    with th.no_grad():
        for t in (2, 5):  # the third step of each episode is truncated
            for i in range(2):
                states = RNNStates(
                    tuple(th.as_tensor(s[t][:, [i]]) for s in (buffer.hidden_states_pi, buffer.cell_states_pi)),
                    tuple(th.as_tensor(s[t][:, [i]]) for s in (buffer.hidden_states_vf, buffer.cell_states_vf)),
                )
                obs, start = th.as_tensor(buffer.observations[t, [i]]), th.as_tensor(buffer.episode_starts[t, [i]])
                after = policy(obs, states, start)[3].vf  # the env's critic state after its episode's last step
                own = policy.predict_values(terminal, after, th.zeros(1)).item()
                fresh = policy.predict_values(terminal, (th.zeros_like(after[0]), th.zeros_like(after[1])), th.zeros(1)).item()
                assert buffer.rewards[t, i] == pytest.approx(1.0 + 0.9 * own, abs=1e-5)
                assert abs(own - fresh) > 1e-4  # the env's own state makes a difference the test sees
    assert np.all(buffer.rewards[[0, 1, 3, 4]] == 1.0)


@pytest.mark.slow
def test_recurrent_trpo_learns_cartpole_without_velocities_where_feed_forward_trpo_cannot() -> None:
    """trpo_lstm.yml's CartPoleNoVel-v1 entry, 100K steps: 20 deterministic episodes after training."""
    from benchmarks.recurrent import train_cell

    assert train_cell("trpo_lstm", "CartPoleNoVel-v1", seed=0)["final"] >= 450
    assert train_cell("trpo", "CartPoleNoVel-v1", seed=0)["final"] < 200


def test_the_class_defaults_cells_build_each_class_with_no_keywords_on_one_plain_env() -> None:
    from benchmarks.recurrent import algorithm_class, model_settings

    for algo, policy, cls in [
        ("trpo_lstm-defaults", "MlpLstmPolicy", RecurrentTRPO),
        ("trpo-defaults", "MlpPolicy", TRPO),
    ]:
        env_settings, kwargs = model_settings(algo, "CartPoleNoVel-v1")
        assert kwargs == {}
        assert env_settings == {"n_envs": 1, "n_timesteps": 100_000, "normalize": False, "policy": policy}
        assert algorithm_class(algo) is cls
    assert algorithm_class("ppo_lstm-defaults").__name__ == "RecurrentPPO"
    yaml_settings, yaml_kwargs = model_settings("trpo_lstm", "CartPoleNoVel-v1")
    assert yaml_settings["n_envs"] == 8 and yaml_kwargs["target_kl"] == 0.01  # the YAML cells are unchanged


def test_the_recurrent_report_gives_final_and_auc_verdicts_and_a_table_for_the_class_defaults(tmp_path: Path) -> None:
    from reporting import recurrent_report, results_io

    def cell(algo: str, seed: int, final: float, curve: list[float]) -> None:
        data = {"algo": algo, "env": "CartPoleNoVel-v1", "seed": seed, "budget": 100_000, "final": final,
                "timesteps": [10_000 * (i + 1) for i in range(len(curve))], "returns": curve}  # fmt: skip
        results_io.write_result(str(tmp_path / f"{algo}_{seed}.json"), data, command="test")

    for seed in range(3):
        cell("trpo_lstm", seed, 500.0 - seed, [300.0 + seed, 500.0])  # AUC about 400
        cell("ppo_lstm", seed, 498.0 + seed, [100.0 + seed, 200.0])  # final even, AUC about 150: behind ours
        cell("trpo_lstm-defaults", seed, 100.0 + seed, [50.0 + seed, 100.0])
        cell("ppo_lstm-defaults", seed, 20.0 + seed, [10.0 + seed, 20.0])
    labels = {"trpo_lstm": "RecurrentTRPO", "ppo_lstm": "RecurrentPPO"}
    text = recurrent_report.report(str(tmp_path), ["trpo_lstm", "ppo_lstm"], labels)
    yaml_part, defaults_part = text.split("Class defaults")
    ppo_row = next(line for line in yaml_part.splitlines() if "| RecurrentPPO |" in line)
    final_verdict, auc_verdict = ppo_row.split("|")[-3:-1]
    assert final_verdict.strip().startswith("even") and auc_verdict.strip().startswith("ahead (+250")
    ppo_defaults_row = next(line for line in defaults_part.splitlines() if "| RecurrentPPO |" in line)
    assert "| 20, 21, 22 |" in ppo_defaults_row
    assert ppo_defaults_row.split("|")[-3].strip().startswith("ahead (+80")
