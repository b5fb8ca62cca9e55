"""
Long runs that survive a stopped process (``sb3_trpo_ext.zoo.resume``): a zoo run killed with SIGKILL after a
checkpoint and started again with the same command ends as an uninterrupted run does (steps, Monitor log, evaluation
schedule); a checkpoint resumed in-process continues the uninterrupted run exactly where the env allows it; and the
benchmark matrix runner skips finished cells and resumes an unfinished one.
"""

import csv
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import sb3_contrib
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from benchmarks import matrix, matrix_cells
from reporting import results_io
from sb3_trpo_ext import TRPO
from sb3_trpo_ext.zoo.resume import (
    EPISODES_FILE,
    OWNER_FILE,
    ResumeCallback,
    RunInUseError,
    claim_run,
    latest_checkpoint,
    read_episodes,
    release_run,
    run_owner,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 16_384  # 16 rollouts of CartPole-v1's 2 envs x 512 steps (hyperparams/trpo_ext.yml)
EVAL_FREQ = 2_048
CHECKPOINT_FREQ = 3_000  # the first checkpoint at 3,072 steps, the start of the 4th rollout


def zoo_command(log_folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sb3_trpo_ext.train", "--algo", "trpo_ext", "--env", "CartPole-v1", "--seed", "0",
        "-n", str(BUDGET), "--eval-freq", str(EVAL_FREQ), "--eval-episodes", "2", "--num-threads", "1",
        "-f", str(log_folder), "--checkpoint-freq", str(CHECKPOINT_FREQ), "--resume", *extra,
    ]  # fmt: skip


def run_until_first_checkpoint(command: list[str], run_dir: Path, log: Path, timeout: float = 120.0) -> None:
    """Start the command, SIGKILL it as soon as its first checkpoint is in place (mid-run), and wait for it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    try:
        while latest_checkpoint(run_dir) is None:
            assert process.poll() is None, f"the run ended before its first checkpoint:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def monitor_rows(path: Path) -> tuple[str, list[dict[str, str]]]:
    """:return: a Monitor file's header line and its rows"""
    with open(path) as file:
        header = file.readline()
        return header, list(csv.DictReader(file))


def num_timesteps(zip_path: Path) -> int:
    return TRPO.load(zip_path, device="cpu").num_timesteps


# ---------------------------------------------------------------------------------------------------------------------
# (a) a zoo run killed after a checkpoint and started again with the same command


def test_killed_run_resumes_with_the_same_command_and_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    run_dir = logs / "trpo_ext" / "CartPole-v1_1"
    command = zoo_command(logs)
    run_until_first_checkpoint(command, run_dir, tmp_path / "first.log")
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.steps == 3_072 and not (run_dir / "CartPole-v1.zip").exists()
    state = checkpoint.state
    assert (state.num_timesteps, state.n_calls, state.n_envs, state.total_timesteps) == (3_072, 1_536, 2, BUDGET)
    assert num_timesteps(checkpoint.model_path) == 3_072
    saved = {path.name: monitor_rows(path) for path in (checkpoint.path / "run").glob("*.monitor.csv")}
    saved_rows = {name: rows for name, (_, rows) in saved.items()}
    assert sorted(saved_rows) == ["0.monitor.csv", "1.monitor.csv"]
    saved_episodes = checkpoint.episodes()
    assert len(saved_episodes) == sum(len(rows) for rows in saved_rows.values()) > 0

    env = dict(os.environ, OMP_NUM_THREADS="1")
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"Resuming {run_dir} from {checkpoint.path.name} (3,072 steps)" in second.stdout
    assert [path.name for path in (logs / "trpo_ext").iterdir()] == ["CartPole-v1_1"]  # the same run, no new one

    # the steps: as many as an uninterrupted run's, counted on from the checkpoint
    assert num_timesteps(run_dir / "CartPole-v1.zip") == BUDGET
    final = latest_checkpoint(run_dir)
    assert final is not None and [path.name for path in run_dir.glob("checkpoint_*")] == [final.path.name]
    assert (final.steps, final.state.finished, final.state.resumed_at, final.state.n_calls) == (BUDGET, True, [3_072], 8_192)

    # the evaluations: the schedule of an uninterrupted run, every EVAL_FREQ steps, none repeated or missing
    evaluations = np.load(run_dir / "evaluations.npz")
    assert list(evaluations["timesteps"]) == list(range(EVAL_FREQ, BUDGET + 1, EVAL_FREQ))
    assert evaluations["results"].shape == (BUDGET // EVAL_FREQ, 2)

    # the Monitor files: the rows up to the checkpoint kept, the later ones appended, time growing, no duplicate
    episodes = read_episodes(run_dir / EPISODES_FILE)
    for name, kept in saved_rows.items():
        header, rows = monitor_rows(run_dir / name)
        assert header == saved[name][0]  # one header, the run's start
        assert rows[: len(kept)] == kept and len(rows) > len(kept)
        times = [float(row["t"]) for row in rows]
        assert times == sorted(times)
        assert len({tuple(row.values()) for row in rows}) == len(rows)
        lengths = [int(row["l"]) for row in rows]
        # each env ran BUDGET / 2 steps: its episodes, plus at most one lost at the restart and one cut at the end
        assert BUDGET // 2 - 2 * 500 <= sum(lengths) <= BUDGET // 2
        env_index = int(name.split(".")[0])
        assert [episode.l for episode in episodes if episode.env == env_index] == lengths
    # the episode log: the checkpoint's, then the resumed run's, at growing step counts within the budget
    assert episodes[: len(saved_episodes)] == saved_episodes
    steps = [episode.step for episode in episodes]
    assert steps == sorted(steps) and steps[-1] <= BUDGET and steps[len(saved_episodes)] > 3_072

    # the same command once more: the run has its steps, nothing is trained
    third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "nothing left to train" in third.stdout
    assert list(np.load(run_dir / "evaluations.npz")["timesteps"]) == list(evaluations["timesteps"])


def test_a_run_trained_by_a_live_process_is_not_trained_by_a_second_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    claim_run(run_dir)  # a killed process's claim is taken over
    assert json.loads((run_dir / OWNER_FILE).read_text())["pid"] == os.getpid() and run_owner(run_dir) is None
    release_run(run_dir)
    assert not (run_dir / OWNER_FILE).exists()
    (run_dir / OWNER_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # alive
    with pytest.raises(RunInUseError, match=f"process {os.getppid()}"):
        claim_run(run_dir)


# ---------------------------------------------------------------------------------------------------------------------
# (b) in-process: a resumed run continues the uninterrupted one


class Corridor(gym.Env):
    """A deterministic env whose 16-step episodes end at every rollout boundary (n_steps 64): nothing is lost there."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    length = 16

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(action == self.t % 2)
        self.t += 1
        return self.observation(), reward, self.t >= self.length, False, {}

    def observation(self) -> np.ndarray:
        return np.array([self.t / self.length, self.t % 2, 1.0], dtype=np.float32)


STEPS = 640  # 5 rollouts of 2 envs x 64 steps; a checkpoint every 200 steps: at 256 (the 3rd rollout's start)


def corridor_env() -> DummyVecEnv:
    return DummyVecEnv([lambda: Monitor(Corridor())] * 2)


def corridor_model(algorithm: type[BaseAlgorithm], sb3_rollouts: bool) -> BaseAlgorithm:
    model = algorithm("MlpPolicy", corridor_env(), n_steps=64, batch_size=32, seed=3, policy_kwargs={"net_arch": [8]})
    if sb3_rollouts:
        on_sb3_rollouts(model)
    return model


def on_sb3_rollouts(model: BaseAlgorithm) -> None:
    """Our algorithms on SB3's rollout loop (sb3-contrib's always is)."""
    if isinstance(model, TRPO):
        model.backends = model.backends._replace(rollouts="sb3")


class RngProbe(BaseCallback):
    """Torch's generator state at each rollout start (after the ResumeCallback's restore), by step count."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, th.Tensor] = {}

    def _on_rollout_start(self) -> None:
        self.states[self.model.num_timesteps] = th.get_rng_state()

    def _on_step(self) -> bool:
        return True


class StopAfterCheckpoint(BaseCallback):
    """Ends training at the first step after a checkpoint was written: the process "dies" there."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir

    def _on_step(self) -> bool:
        return latest_checkpoint(self.run_dir) is None


def same_tensors(first: Any, second: Any) -> bool:
    """Whether two (nested) state dicts hold equal tensors and values."""
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(same_tensors(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(same_tensors(a, b) for a, b in zip(first, second, strict=True))
    if isinstance(first, th.Tensor):
        return th.equal(first, second)
    return first == second


@pytest.mark.parametrize(
    "algorithm, sb3_rollouts, exact",
    [(sb3_contrib.TRPO, True, True), (TRPO, True, True), (TRPO, False, True)],
    ids=["sb3-contrib", "ours-sb3-rollouts", "ours-fast-rollouts"],
)
def test_resumed_run_continues_the_uninterrupted_one(
    tmp_path: Path, algorithm: type[BaseAlgorithm], sb3_rollouts: bool, exact: bool
) -> None:
    uninterrupted, probe = corridor_model(algorithm, sb3_rollouts), RngProbe()
    uninterrupted.learn(STEPS, callback=[ResumeCallback(tmp_path / "a", 200, "Corridor"), probe])

    stopped = corridor_model(algorithm, sb3_rollouts)
    stopped.learn(STEPS, callback=[ResumeCallback(tmp_path / "b", 200, "Corridor"), StopAfterCheckpoint(tmp_path / "b")])
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and (checkpoint.steps, checkpoint.state.n_updates) == (256, 2)
    assert stopped.num_timesteps == 258  # one step after the checkpoint, no update since

    resumed = checkpoint.load_model(algorithm, corridor_env(), device="cpu")
    if sb3_rollouts:
        on_sb3_rollouts(resumed)
    # what the checkpoint restores exactly: the counters, the parameters and the optimizer's state
    assert (resumed.num_timesteps, resumed._n_updates, resumed._episode_num) == (256, 2, stopped._episode_num)
    assert same_tensors(resumed.policy.state_dict(), stopped.policy.state_dict())
    assert same_tensors(resumed.policy.optimizer.state_dict(), stopped.policy.optimizer.state_dict())

    resumed_probe = RngProbe()
    callback = ResumeCallback(tmp_path / "b", 200, "Corridor", resume_from=checkpoint)
    resumed.learn(STEPS - resumed.num_timesteps, callback=[callback, resumed_probe], reset_num_timesteps=False)
    assert resumed.num_timesteps == uninterrupted.num_timesteps == STEPS
    assert resumed._n_updates == uninterrupted._n_updates == 5
    # the generators at every rollout start from the checkpoint on are the uninterrupted run's
    assert sorted(resumed_probe.states) == [256, 384, 512]
    assert all(th.equal(state, probe.states[steps]) for steps, state in resumed_probe.states.items())
    # the episode log goes on (every episode ends at a rollout boundary here: none lost), the same episodes ending at
    # the same steps (their returns are the same where the actions are: on SB3's rollout loop)
    logged = read_episodes(tmp_path / "a" / EPISODES_FILE)
    assert [episode[:2] + (episode.l,) for episode in callback.episodes] == [episode[:2] + (episode.l,) for episode in logged]
    assert [episode.r for episode in callback.episodes][:16] == [episode.r for episode in logged][:16]  # up to 256
    assert ([episode.r for episode in callback.episodes] == [episode.r for episode in logged]) == exact
    # nothing random runs between the update and the checkpoint (our fast path draws the rollout's noise after
    # on_rollout_start, where the generators are restored, as SB3 samples after it): the same parameters
    same = same_tensors(resumed.policy.state_dict(), uninterrupted.policy.state_dict())
    assert same == exact
    if exact:
        assert same_tensors(resumed.policy.optimizer.state_dict(), uninterrupted.policy.optimizer.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# (c) the benchmark matrix runner


def test_matrix_runner_skips_finished_cells_and_resumes_an_unfinished_one(tmp_path: Path, capsys: Any) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    argv = ["--algos", "trpo_ext", "--envs", "CartPole-v1", "--seeds", "0", "1", "--budget", str(BUDGET)]
    argv += ["--eval-freq", str(EVAL_FREQ), "--checkpoint-freq", str(CHECKPOINT_FREQ)]
    argv += ["--results", str(results), "--logs", str(logs)]
    done, unfinished = matrix_cells.make_cells(
        ["trpo_ext"], ["CartPole-v1"], [0, 1], budget=BUDGET, eval_freq=EVAL_FREQ, results=str(results),
        logs=str(logs), checkpoint_freq=CHECKPOINT_FREQ,
    )  # fmt: skip
    assert unfinished.command()[-3:] == ["--checkpoint-freq", str(CHECKPOINT_FREQ), "--resume"]
    results_io.write_result(done.result_path, {"seed": 0})
    mtime = Path(done.result_path).stat().st_mtime
    # seed 1: a runner's training killed after its first checkpoint, its log folder left as a killed runner leaves it
    Path(unfinished.log_dir).mkdir(parents=True)
    run_dir = Path(unfinished.log_dir) / "trpo_ext" / "CartPole-v1_1"
    run_until_first_checkpoint(unfinished.command(), run_dir, Path(unfinished.log_dir) / "train.log")
    assert unfinished.resumable() is not None and done.resumable() is None

    assert matrix.main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "[done  ] trpo_ext CartPole-v1 seed 0" in printed
    assert "[todo  ] trpo_ext CartPole-v1 seed 1 (resumes at 3,072 steps)" in printed

    assert matrix.main(argv) == 0
    assert Path(done.result_path).stat().st_mtime == mtime  # skipped
    cell = results_io.read_result(unfinished.result_path)["data"]
    assert cell["steps"] == list(range(EVAL_FREQ, BUDGET + 1, EVAL_FREQ))
    assert (cell["checkpoint_freq"], cell["resumed_at"]) == (CHECKPOINT_FREQ, [3_072])
    assert "--checkpoint-freq 3000 --resume" in cell["command"] and "episodes" not in cell  # full games: Atari only
    assert not Path(unfinished.log_dir).exists()  # deleted once the result is written


def test_atari_cells_checkpoint_and_record_full_games(tmp_path: Path) -> None:
    preset = matrix_cells.PRESETS["atari"]
    cells = matrix_cells.make_cells(preset["algos"], preset["envs"], preset["seeds"], budgets=preset["budgets"])
    assert [cell.env for cell in cells] == list(matrix_cells.ATARI_GAMES) and len(cells) == 7
    assert all((cell.budget, cell.eval_freq, cell.checkpoint_freq) == (2_000_000, 100_000, 50_000) for cell in cells)
    # every Atari cell checkpoints; sb3-contrib's then runs through our entry point, with our atari settings
    contrib = matrix_cells.make_cells(["sb3-contrib"], ["BreakoutNoFrameskip-v4"], [0], budget=10_000)[0]
    assert contrib.command()[1:5] == ["-m", "sb3_trpo_ext.train", "--algo", "trpo"]
    assert contrib.command()[-4:] == ["50000", "--resume", "-conf", "benchmarks/matrix_configs/trpo_contrib.yml"]
    assert matrix_cells.make_cells(["sb3-contrib"], ["Acrobot-v1"], [0])[0].command()[2] == "rl_zoo3.train"  # as before
    for game in matrix_cells.ATARI_GAMES:  # sb3-contrib's Atari entries: our atari settings, those it takes
        theirs, ours = matrix_cells.config_entry("sb3-contrib", game), matrix_cells.config_entry("trpo_ext", game)
        assert theirs == {key: value for key, value in ours.items() if key in inspect.signature(sb3_contrib.TRPO).parameters
                          or key in ("env_wrapper", "frame_stack", "n_envs", "n_timesteps")}  # fmt: skip
    vine = matrix_cells.make_cells(["vine_trpo"], ["QbertNoFrameskip-v4"], [0], budget=2_000_000)[0]
    assert vine.checkpoint_freq == 50_000 and "--resume" in vine.command()

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [["step", "env", "r", "l", "t"]] + [[8 * (i + 1), i % 8, float(i), 400, 1.0] for i in range(150)]
    (run_dir / EPISODES_FILE).write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")
    games = matrix.full_games(str(run_dir))
    assert games["episodes"]["steps"][:2] == [8, 16] and games["episodes"]["scores"][-1] == 149.0
    assert games["last_100_mean"] == pytest.approx(np.mean(np.arange(50, 150)))
    json.dumps(games)  # goes into the result file


def test_a_killed_vine_run_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    # the vine counts trunk and branch steps (512 + up to 64 x 2 x 10 per CartPole-v1 iteration) and calls callbacks on
    # trunk steps only: its checkpoints are taken by step count, and its branch generator is in the checkpoint
    def command(logs: Path) -> list[str]:
        vine = ["--algo", "vine_trpo", "--eval-freq", "512", "--checkpoint-freq", "5000", "-f", str(logs)]
        return [*zoo_command(logs), *vine]  # the later flags win

    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole = subprocess.run(command(tmp_path / "whole"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    run_dir = tmp_path / "cut" / "vine_trpo" / "CartPole-v1_1"
    run_until_first_checkpoint(command(tmp_path / "cut"), run_dir, tmp_path / "first.log")
    first = latest_checkpoint(run_dir)
    assert first is not None and 5_000 <= first.steps < BUDGET
    second = subprocess.run(command(tmp_path / "cut"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    final, reference = latest_checkpoint(run_dir), latest_checkpoint(tmp_path / "whole" / "vine_trpo" / "CartPole-v1_1")
    assert final is not None and reference is not None and final.state.resumed_at == [first.steps]
    # the budget in whole iterations (the envs restart at the resume, so later branch counts differ from the whole run's)
    assert final.state.finished and BUDGET <= final.steps < BUDGET + 512 + 64 * 2 * 10
    assert abs(final.state.n_updates - reference.state.n_updates) <= 1
    # one evaluation per iteration (at the end of its trunk): those before the checkpoint are the whole run's, none
    # repeated or lost after it
    evaluations = list(np.load(run_dir / "evaluations.npz")["timesteps"])
    reference_evaluations = list(np.load(reference.path.parent / "evaluations.npz")["timesteps"])
    before = [step for step in reference_evaluations if step < first.steps]
    assert evaluations[: len(before)] == before and evaluations == sorted(set(evaluations))
    assert len(evaluations) == final.state.n_updates
    steps = [episode.step for episode in read_episodes(run_dir / EPISODES_FILE)]
    assert steps == sorted(steps) and steps[-1] <= final.steps
