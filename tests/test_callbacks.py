"""Callbacks, progress bar and logging outputs (tensorboard, stdout) during ``learn``."""

import glob
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor

SMALL = dict(n_steps=64, batch_size=32, n_critic_updates=2, seed=0)


class StopAt(BaseCallback):
    """Returns False at the ``stop_at``-th call of ``on_step``."""

    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.rollout_ends = 0

    def _on_step(self) -> bool:
        return self.n_calls < self.stop_at

    def _on_rollout_end(self) -> None:
        self.rollout_ends += 1


@pytest.mark.parametrize("n_envs", [1, 2])
@pytest.mark.parametrize("stop_at", [5, 64 + 3])
def test_callback_returning_false_stops_training_at_once(algorithm: type, n_envs: int, stop_at: int) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs, seed=0), **SMALL)
    callback = StopAt(stop_at)
    model.learn(10_000, callback=callback)
    assert callback.n_calls == stop_at
    assert model.num_timesteps == stop_at * n_envs
    completed_rollouts = stop_at // 64  # the interrupted rollout is never trained on
    assert callback.rollout_ends == completed_rollouts
    assert model._n_updates == completed_rollouts


def test_eval_callback_writes_the_expected_number_of_evaluations(algorithm: type, tmp_path: Path) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), **SMALL)
    eval_env = Monitor(gym.make("CartPole-v1"))
    callback = EvalCallback(
        eval_env, eval_freq=64, n_eval_episodes=2, log_path=str(tmp_path), best_model_save_path=str(tmp_path), verbose=0
    )
    model.learn(256, callback=callback)
    with np.load(tmp_path / "evaluations.npz") as data:
        np.testing.assert_array_equal(data["timesteps"], [64, 128, 192, 256])
        assert data["results"].shape == (4, 2)
        assert data["ep_lengths"].shape == (4, 2)
        assert np.all(data["ep_lengths"] >= 1)
        # CartPole pays 1 per step
        np.testing.assert_allclose(data["results"], data["ep_lengths"])
    best = algorithm.load(tmp_path / "best_model.zip", device="cpu")
    action, _ = best.predict(eval_env.observation_space.sample(), deterministic=True)
    assert eval_env.action_space.contains(int(action))


def test_checkpoint_callback_zips_load_and_predict(algorithm: type, tmp_path: Path) -> None:
    model = algorithm("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), **SMALL)
    model.learn(256, callback=CheckpointCallback(save_freq=64, save_path=str(tmp_path), name_prefix="ckpt"))
    paths = sorted(glob.glob(str(tmp_path / "ckpt_*_steps.zip")), key=os.path.getmtime)
    assert [os.path.basename(p) for p in paths] == [f"ckpt_{steps}_steps.zip" for steps in (64, 128, 192, 256)]
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], dtype=np.float32)
    actions = []
    for path, steps in zip(paths, (64, 128, 192, 256), strict=True):
        checkpoint = algorithm.load(path, device="cpu")
        assert type(checkpoint) is algorithm
        assert checkpoint.num_timesteps == steps
        action, _ = checkpoint.predict(obs, deterministic=True)
        assert action.shape == (2, 1) and np.all(np.isfinite(action))
        actions.append(action)
    assert not np.array_equal(actions[0], actions[-1]), "checkpoints should reflect the training in between"


def test_progress_bar_is_drawn_to_the_requested_timesteps(algorithm: type, capsys: pytest.CaptureFixture) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), **SMALL)
    model.learn(256, progress_bar=True)
    assert model.num_timesteps == 256
    assert model._n_updates == 2
    drawn = capsys.readouterr().out
    assert "256/256" in drawn and "100%" in drawn  # SB3's ProgressBarCallback (rich) went to the end


def test_tensorboard_log_contains_the_train_statistics(algorithm: type, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), tensorboard_log=str(tmp_path), **SMALL)
    model.learn(3 * 64)  # train stats are dumped at the start of the next iteration: three rollouts log two updates
    run_dir = tmp_path / f"{algorithm.__name__}_1"
    assert run_dir.is_dir(), os.listdir(tmp_path)
    assert glob.glob(str(run_dir / "events.out.tfevents.*"))
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for tag in ("train/kl_divergence_loss", "train/policy_objective", "train/value_loss", "train/step_size"):
        assert tag in tags, sorted(tags)
    assert "train/n_updates" not in tags  # excluded from tensorboard
    kl_events = accumulator.Scalars("train/kl_divergence_loss")
    assert [event.step for event in kl_events] == [128, 192]
    assert all(np.isfinite(event.value) and event.value >= 0.0 for event in kl_events)


def test_verbose_1_prints_a_table_with_the_train_keys(algorithm: type, capsys: pytest.CaptureFixture[str]) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), verbose=1, **SMALL)
    model.learn(2 * 64)
    out = capsys.readouterr().out
    assert "train/" in out
    for key in ("policy_objective", "kl_divergence_loss", "value_loss", "explained_variance", "n_updates"):
        assert key in out, key
    assert "rollout/" in out and "time/" in out
