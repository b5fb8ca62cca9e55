"""
Callbacks, progress bar and logging outputs (tensorboard, stdout) during ``learn``.

The vine calls callbacks at its trunk steps only, while its ``num_timesteps`` (which callbacks and loggers read, and
``learn``'s budget counts) adds its branch steps: 8 to 24 per iteration with ``VINE_BRANCHES``, exactly 24 on
Pendulum (whose episodes never end within a branch).
"""

import glob
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import SimulatorSteps, branch_steps_range, budget, small
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor

from sb3_trpo_ext import VineTRPO


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
    steps = SimulatorSteps()
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=0, wrapper_class=steps.wrapper)
    model = algorithm("MlpPolicy", env, **small(algorithm))
    callback = StopAt(stop_at)
    model.learn(10_000, callback=callback)
    assert callback.n_calls == stop_at
    assert env.get_attr("total_steps") == [stop_at] * n_envs  # the trunk stopped at once
    completed_rollouts = stop_at // 64  # the interrupted rollout is never trained on
    assert callback.rollout_ends == completed_rollouts
    assert model._n_updates == completed_rollouts
    # the vine ran the branches of the completed rollouts only (none when stopped in the first)
    assert model.num_timesteps == steps.count
    least, most = branch_steps_range(algorithm, completed_rollouts)
    assert least <= model.num_timesteps - stop_at * n_envs <= most


def test_eval_callback_writes_the_expected_number_of_evaluations(algorithm: type, tmp_path: Path) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), **small(algorithm))
    eval_env = Monitor(gym.make("CartPole-v1"))
    callback = EvalCallback(
        eval_env, eval_freq=64, n_eval_episodes=2, log_path=str(tmp_path), best_model_save_path=str(tmp_path), verbose=0
    )
    model.learn(budget(algorithm, 4, 64), callback=callback)
    with np.load(tmp_path / "evaluations.npz") as data:
        # every 64 trunk steps, at num_timesteps: TRPO and NaturalPG [64, 128, 192, 256]; the vine's adds the branch
        # steps of the iterations before (none before the first evaluation)
        timesteps = data["timesteps"]
        assert len(timesteps) == 4 and timesteps[0] == 64
        least, most = branch_steps_range(algorithm, 1)
        assert all(least <= gap - 64 <= most for gap in np.diff(timesteps)), timesteps
        assert least <= model.num_timesteps - timesteps[-1] <= most  # the last iteration's branches
        assert data["results"].shape == (4, 2)
        assert data["ep_lengths"].shape == (4, 2)
        assert np.all(data["ep_lengths"] >= 1)
        # CartPole pays 1 per step
        np.testing.assert_allclose(data["results"], data["ep_lengths"])
    best = algorithm.load(tmp_path / "best_model.zip", device="cpu")
    action, _ = best.predict(eval_env.observation_space.sample(), deterministic=True)
    assert eval_env.action_space.contains(int(action))


def test_checkpoint_callback_zips_load_and_predict(algorithm: type, tmp_path: Path) -> None:
    model = algorithm("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), **small(algorithm))
    callback = CheckpointCallback(save_freq=64, save_path=str(tmp_path), name_prefix="ckpt")
    model.learn(budget(algorithm, 4, 64), callback=callback)
    # every 64 trunk steps, named after num_timesteps: TRPO and NaturalPG 64, 128, 192, 256; the vine's counts the
    # 24 branch steps of each iteration before (64, 152, 240, 328)
    branch_steps = branch_steps_range(algorithm, 1)[1]
    expected_steps = [64 * k + branch_steps * (k - 1) for k in (1, 2, 3, 4)]
    paths = sorted(glob.glob(str(tmp_path / "ckpt_*_steps.zip")), key=os.path.getmtime)
    assert [os.path.basename(p) for p in paths] == [f"ckpt_{steps}_steps.zip" for steps in expected_steps]
    obs = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], dtype=np.float32)
    actions = []
    for path, steps in zip(paths, expected_steps, strict=True):
        checkpoint = algorithm.load(path, device="cpu")
        assert type(checkpoint) is algorithm
        assert checkpoint.num_timesteps == steps
        action, _ = checkpoint.predict(obs, deterministic=True)
        assert action.shape == (2, 1) and np.all(np.isfinite(action))
        actions.append(action)
    assert not np.array_equal(actions[0], actions[-1]), "checkpoints should reflect the training in between"


def test_progress_bar_is_drawn_to_the_requested_timesteps(algorithm: type, capsys: pytest.CaptureFixture) -> None:
    # the vine's bar is moved by its branch steps too (they count in learn's budget, but no callback sees them)
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), **small(algorithm))
    total = budget(algorithm, 2, 128)
    model.learn(total, progress_bar=True)
    assert model._n_updates == 2
    least, most = branch_steps_range(algorithm, 2)
    assert least <= model.num_timesteps - 256 <= most
    drawn = capsys.readouterr().out
    # SB3's ProgressBarCallback (rich) counted what learn counted, up to the end (TRPO and NaturalPG: 256/256)
    assert f"{model.num_timesteps}/{total}" in drawn and "100%" in drawn


def test_tensorboard_log_contains_the_train_statistics(algorithm: type, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = algorithm("MlpPolicy", env, tensorboard_log=str(tmp_path), **small(algorithm))
    model.learn(budget(algorithm, 3, 64))  # train stats are dumped at the start of the next iteration: 3 rollouts, 2 updates
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
    # logged at num_timesteps after the 2nd and 3rd rollouts: 128 and 192 trunk steps, plus the vine's branch steps
    if algorithm is VineTRPO:
        trunk, branches = (
            np.array([event.value for event in accumulator.Scalars(f"rollout/{kind}_steps")]) for kind in ("trunk", "branch")
        )
        np.testing.assert_array_equal(trunk, [64, 64, 64])
        least, most = branch_steps_range(algorithm, 1)
        assert np.all((least <= branches) & (branches <= most)), branches
        expected_steps = list(np.cumsum(trunk + branches)[1:])
    else:
        expected_steps = [128, 192]
    assert [event.step for event in kl_events] == expected_steps
    assert expected_steps[-1] == model.num_timesteps
    assert all(np.isfinite(event.value) and event.value >= 0.0 for event in kl_events)


def test_verbose_1_prints_a_table_with_the_train_keys(algorithm: type, capsys: pytest.CaptureFixture[str]) -> None:
    model = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), verbose=1, **small(algorithm))
    model.learn(budget(algorithm, 2, 64))
    out = capsys.readouterr().out
    assert "train/" in out
    for key in ("policy_objective", "kl_divergence_loss", "value_loss", "explained_variance", "n_updates"):
        assert key in out, key
    assert "rollout/" in out and "time/" in out
    assert ("branch_steps" in out) == (algorithm is VineTRPO)  # the vine's table also shows its trunk and branch steps
