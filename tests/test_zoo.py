"""
rl-zoo3 integration, end to end: the CLI on tiny budgets (train, enjoy, continue, optimize, plots), every YAML entry
built on its env, and the errors of bad YAML.

CLI runs go through subprocesses exactly as a user types them (``python -m sb3_trpo_ext.train ...``).
``vine_trpo`` tests are skipped while ``sb3_trpo_ext.vine`` does not provide ``VineTRPO``.
"""

import argparse
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

optuna = pytest.importorskip("optuna")
rl_zoo3 = pytest.importorskip("rl_zoo3")

from rl_zoo3 import hyperparams_opt  # noqa: E402
from stable_baselines3.common.callbacks import EvalCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from sb3_trpo_ext import TRPO, MaskableNaturalPG, MaskableTRPO, NaturalPG, RecurrentNaturalPG, RecurrentTRPO  # noqa: E402
from sb3_trpo_ext.zoo.checks import (  # noqa: E402
    HyperparameterError,
    check_config_file,
    check_hyperparams,
    constructor_parameters,
)
from sb3_trpo_ext.zoo.evaluation import calls_for_counted_steps, warn_if_never_evaluated  # noqa: E402
from sb3_trpo_ext.zoo.exp_manager import ExperimentManager  # noqa: E402
from sb3_trpo_ext.zoo.registration import ZOO_KEYS, default_config, hyperparams_folder, register, vine_class  # noqa: E402
from sb3_trpo_ext.zoo.samplers import CONVERTERS, SAMPLERS  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
VINE = vine_class()
CLASSES: dict[str, Any] = {
    "trpo_ext": TRPO, "natural_pg": NaturalPG, "vine_trpo": VINE, "trpo_lstm": RecurrentTRPO,
    "natural_pg_lstm": RecurrentNaturalPG, "trpo_mask": MaskableTRPO, "natural_pg_mask": MaskableNaturalPG,
}  # fmt: skip
UNMASKED_KEYS = [key for key in ZOO_KEYS if not key.endswith("_mask")]
"""The keys whose CLI runs on CartPole and Pendulum (no action masks): the mask keys' runs are in test_maskable.py."""
PLANNED_VINE_KEYWORDS = {
    "n_rollout_states",
    "n_actions_per_state",
    "rollout_length",
    "action_sampling",
    "bootstrap_branches",
    "common_random_numbers",
}
# -params overrides that keep a CartPole run to a few small iterations
TINY = {
    "trpo_ext": ["n_steps:128", "batch_size:64"],
    "natural_pg": ["n_steps:128", "batch_size:64"],
    "vine_trpo": ["n_steps:128", "batch_size:64", "n_rollout_states:8", "rollout_length:10"],
    "trpo_lstm": ["n_steps:128", "batch_size:64"],
    "natural_pg_lstm": ["n_steps:128", "batch_size:64"],
}
CLI_TIMEOUT = 300


def algorithm_class(key: str) -> Any:
    if CLASSES[key] is None:
        pytest.skip("sb3_trpo_ext.vine does not provide VineTRPO yet")
    return CLASSES[key]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def run_module(module: str, args: list[str], cwd: Path, expect_success: bool = True, **extra_env: str):
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=child_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    if expect_success:
        assert result.returncode == 0, f"{module} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def train_args(key: str, env_id: str, n_timesteps: int, *extra: str) -> list[str]:
    return ["--algo", key, "--env", env_id, "-n", str(n_timesteps), "-f", "logs", "--seed", "0", "--num-threads", "1", *extra]


# ---------------------------------------------------------------------------------------------- registration


def test_register_adds_our_keys_and_leaves_rl_zoo3_trpo_alone():
    import sb3_contrib

    registered = register()
    assert rl_zoo3.ALGOS["trpo"] is sb3_contrib.TRPO
    assert rl_zoo3.ALGOS["trpo_ext"] is TRPO
    assert rl_zoo3.ALGOS["natural_pg"] is NaturalPG
    assert ("vine_trpo" in rl_zoo3.ALGOS) == (VINE is not None)
    for key in registered:
        assert hyperparams_opt.HYPERPARAMS_SAMPLER[key] is SAMPLERS[key]
        assert hyperparams_opt.HYPERPARAMS_CONVERTER[key] is CONVERTERS[key]
    assert hyperparams_opt.HYPERPARAMS_SAMPLER["trpo"] is hyperparams_opt.sample_trpo_params


def test_our_hyperparams_folder_is_the_default_config_and_conf_overrides_it(tmp_path):
    assert hyperparams_folder() == REPO_ROOT / "hyperparams"
    assert default_config("trpo") is None
    ours = ExperimentManager(argparse.Namespace(), "trpo_ext", "CartPole-v1", str(tmp_path))
    assert Path(ours.config) == REPO_ROOT / "hyperparams" / "trpo_ext.yml"
    zoo_trpo = Path(rl_zoo3.__file__).parent / "hyperparams" / "trpo.yml"
    overridden = ExperimentManager(argparse.Namespace(), "trpo_ext", "CartPole-v1", str(tmp_path), config=str(zoo_trpo))
    assert Path(overridden.config) == zoo_trpo
    contrib = ExperimentManager(argparse.Namespace(), "trpo", "CartPole-v1", str(tmp_path))
    assert Path(contrib.config) == zoo_trpo  # rl-zoo3's own key keeps rl-zoo3's own YAML


def test_rl_zoo3_trpo_yaml_is_valid_for_trpo_ext():
    """The same YAML runs with sb3-contrib's TRPO (``--algo trpo``) and ours (``--algo trpo_ext -conf ...``)."""
    entries = check_config_file(TRPO, Path(rl_zoo3.__file__).parent / "hyperparams" / "trpo.yml")
    assert "CartPole-v1" in entries and "Hopper-v4" in entries


# ---------------------------------------------------------------------------------------------- YAML entries


def yaml_entries() -> list[tuple[str, str]]:
    cases = []
    for key in ZOO_KEYS:
        for entry in yaml.safe_load((REPO_ROOT / "hyperparams" / f"{key}.yml").read_text()):
            cases.append((key, entry))
    return cases


# envs without an entry of their own, to build the fallback entries on
FALLBACK_ENVS = {"default": "MountainCar-v0", "atari": "AsterixNoFrameskip-v4"}
PAPER_TASKS = ["Swimmer-v5", "Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Ant-v5", "CartPole-v1", "Pendulum-v1"]
PAPER_TASKS += ["Acrobot-v1", "MountainCarContinuous-v0"]
PAPER_TASKS += [
    f"{game}NoFrameskip-v4" for game in ["BeamRider", "Breakout", "Enduro", "Pong", "Qbert", "Seaquest", "SpaceInvaders"]
]


@pytest.mark.parametrize("key", [key for key in UNMASKED_KEYS if not key.endswith("_lstm")])  # the recurrent keys: NoVel tasks
def test_yaml_has_an_entry_with_a_source_comment_for_every_task(key):
    text = (REPO_ROOT / "hyperparams" / f"{key}.yml").read_text()
    entries = yaml.safe_load(text)
    lines = text.splitlines()
    for task in PAPER_TASKS:
        assert task in entries, f"{key}.yml has no {task} entry"
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{task}:"))
        start = index
        while start > 0 and lines[start - 1].startswith("#"):
            start -= 1
        comment = " ".join(lines[start:index])
        assert any(word in comment for word in ("paper", "zoo", "ours", "tianshou")), (
            f"{key}.yml: {task} needs a comment saying where its values come from, got {comment!r}"
        )


def test_vine_yaml_uses_trpo_and_planned_vine_keywords_only():
    """Holds before VineTRPO exists (against its planned keywords) and after (against its constructor)."""
    path = REPO_ROOT / "hyperparams" / "vine_trpo.yml"
    if VINE is not None:
        check_config_file(VINE, path)
    accepted = set(constructor_parameters(TRPO)) | PLANNED_VINE_KEYWORDS | {"n_timesteps", "n_envs", "normalize"}
    accepted |= {"frame_stack", "env_wrapper"}
    for entry, hyperparams in yaml.safe_load(path.read_text()).items():
        unknown = set(hyperparams) - accepted
        assert not unknown, f"vine_trpo.yml entry {entry!r} has keys outside TRPO's and the vine's: {unknown}"
        assert PLANNED_VINE_KEYWORDS <= set(hyperparams), f"vine_trpo.yml entry {entry!r} leaves vine keywords to defaults"


@pytest.mark.parametrize(("key", "entry"), yaml_entries())
def test_every_yaml_entry_builds_on_its_env(key, entry, tmp_path, monkeypatch):
    """Construct (do not train) each entry through rl-zoo3's own preprocessing: n_envs, normalize, wrappers, stacking."""
    algorithm = algorithm_class(key)
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its compiler warnings to ./MUJOCO_LOG.TXT
    env_id = FALLBACK_ENVS.get(entry, entry)
    hyperparams = yaml.safe_load((REPO_ROOT / "hyperparams" / f"{key}.yml").read_text())[entry]
    manager = ExperimentManager(
        argparse.Namespace(), key, env_id, str(tmp_path), eval_freq=-1, seed=0, verbose=0, device="cpu"
    )
    assert manager.entry_name() == entry
    model, _ = manager.setup_experiment()
    try:
        assert type(model) is algorithm
        assert model.n_envs == hyperparams.get("n_envs", 1)
        parameters = constructor_parameters(algorithm)
        for name, value in hyperparams.items():
            if name in parameters and name not in ("policy", "policy_kwargs", "learning_rate") and hasattr(model, name):
                assert getattr(model, name) == value, f"{key} {entry}: {name}"
        if "frame_stack" in hyperparams:  # Atari: AtariWrapper's 84x84 grey frames, stacked, channel first
            assert model.observation_space.shape == (hyperparams["frame_stack"], 84, 84)
        if hyperparams.get("normalize"):
            assert model.get_vec_normalize_env() is not None
    finally:
        model.env.close()


# ---------------------------------------------------------------------------------------------- bad YAML


def test_unknown_keyword_is_named_with_its_entry_and_a_suggestion():
    with pytest.raises(HyperparameterError) as info:
        check_hyperparams(TRPO, {"policy": "MlpPolicy", "n_step": 512}, entry="CartPole-v1", source="my.yml")
    message = str(info.value)
    assert "my.yml, entry 'CartPole-v1'" in message
    assert "unknown keyword 'n_step'" in message and "did you mean 'n_steps'" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("n_steps", "512", "'n_steps' must be int"),
        ("n_steps", 512.0, "write it as the integer 512"),
        ("target_kl", "1e-2", "'target_kl' must be float"),
        ("learning_rate", "1e-3", "'learning_rate' must be a number or a linear schedule"),
        ("normalize_advantage", "yes", "'normalize_advantage' must be bool"),
        ("step_mode", "fixed", "'step_mode' must be one of 'kl', 'constant'"),
        ("policy_kwargs", "dict(net_arch=[64", "'policy_kwargs' string"),
        ("n_envs", 2.5, "'n_envs' must be an integer >= 1"),
        ("seed", 3, "'seed' is set by rl-zoo3 from the command line"),
        ("noise_type", "normal", "off-policy setting"),
    ],
)
def test_wrong_type_is_named_with_its_entry_and_key(key, value, expected):
    with pytest.raises(HyperparameterError) as info:
        check_hyperparams(NaturalPG, {"policy": "MlpPolicy", key: value}, entry="Pendulum-v1", source="my.yml")
    assert "my.yml, entry 'Pendulum-v1'" in str(info.value)
    assert expected in str(info.value)


def test_branch_pool_entry_is_a_dict_of_the_pool_keywords():
    # the YAML holds RayBranchPool's keywords (the zoo builds the pool with --vec-env ray), not a pool object
    check_hyperparams(VINE, {"policy": "MlpPolicy", "branch_pool": {"n_actors": 2}}, entry="CartPole-v1")
    with pytest.raises(HyperparameterError, match="'branch_pool' must be a dict of RayBranchPool keywords"):
        check_hyperparams(VINE, {"policy": "MlpPolicy", "branch_pool": 16}, entry="CartPole-v1")


def test_vine_given_settings_instead_of_a_pool_says_how_to_make_one():
    with pytest.raises(TypeError, match="RayBranchPool"):
        VINE("MlpPolicy", "CartPole-v1", branch_pool={"n_actors": 2})


def test_valid_zoo_strings_pass_the_checks():
    check_hyperparams(
        TRPO,
        {
            "policy": "MlpPolicy",
            "n_timesteps": 1e5,
            "learning_rate": "lin_1e-3",
            "policy_kwargs": "dict(net_arch=[32], activation_fn=nn.ReLU)",
            "normalize": "dict(norm_obs=True, norm_reward=False)",
            "env_wrapper": [{"gymnasium.wrappers.TimeLimit": {"max_episode_steps": 100}}],
        },
        entry="CartPole-v1",
    )


def test_value_rejected_by_the_constructor_is_named_with_its_entry(tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text("CartPole-v1:\n  n_timesteps: 1000\n  policy: 'MlpPolicy'\n  target_kl: -0.01\n")
    manager = ExperimentManager(
        argparse.Namespace(), "trpo_ext", "CartPole-v1", str(tmp_path), eval_freq=-1, config=str(config)
    )
    with pytest.raises(HyperparameterError, match=r"bad.yml, entry 'CartPole-v1': ValueError: target_kl must be > 0"):
        manager.setup_experiment()


def test_cli_rejects_bad_yaml_before_training(tmp_path):
    (tmp_path / "bad.yml").write_text(
        "CartPole-v1:\n  n_timesteps: !!float 1e5\n  policy: 'MlpPolicy'\n  n_step: 512\n  cg_max_steps: '10'\n"
    )
    result = run_module(
        "sb3_trpo_ext.train", train_args("trpo_ext", "CartPole-v1", 256, "-conf", "bad.yml"), tmp_path, expect_success=False
    )
    assert result.returncode == 2
    assert "bad.yml, entry 'CartPole-v1'" in result.stderr
    assert "unknown keyword 'n_step'" in result.stderr and "'cg_max_steps' must be int" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("logs/**/*.zip"))


# ---------------------------------------------------------------------------------------------- train / enjoy / continue

_CARTPOLE_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def zoo_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo_cli")


def cartpole_run(key: str, workdir: Path) -> Path:
    """Train ``key`` on CartPole-v1 once per module (512 steps, evaluations and checkpoints every 128)."""
    algorithm_class(key)
    if key not in _CARTPOLE_RUNS:
        extra = ["--eval-freq", "128", "--eval-episodes", "2", "--save-freq", "128", "-params", *TINY[key]]
        run_module("sb3_trpo_ext.train", train_args(key, "CartPole-v1", 512, *extra), workdir)
        _CARTPOLE_RUNS[key] = workdir / "logs" / key / "CartPole-v1_1"
    return _CARTPOLE_RUNS[key]


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_cli_train_saves_a_model_that_loads_with_our_class(key, zoo_workdir):
    run_folder = cartpole_run(key, zoo_workdir)
    model = algorithm_class(key).load(run_folder / "CartPole-v1.zip", device="cpu")
    assert type(model) is algorithm_class(key)
    assert model.num_timesteps >= 512 and model.n_steps == 128 and model.batch_size == 64
    config = yaml.load((run_folder / "CartPole-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dict(config)["n_steps"] == 128  # the -params override was applied and recorded
    evaluations = np.load(run_folder / "evaluations.npz")  # --eval-freq
    assert len(evaluations["timesteps"]) >= 2
    assert list(run_folder.glob("rl_model_*_steps.zip"))  # --save-freq
    assert (run_folder / "best_model.zip").is_file()


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_cli_enjoy_runs_the_trained_model(key, zoo_workdir):
    cartpole_run(key, zoo_workdir)
    args = ["--algo", key, "--env", "CartPole-v1", "-f", "logs", "--exp-id", "1", "--no-render", "-n", "50"]
    result = run_module("sb3_trpo_ext.enjoy", [*args, "--num-threads", "1"], zoo_workdir)
    assert f"logs/{key}/CartPole-v1_1/CartPole-v1.zip" in result.stdout


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_cli_trained_agent_continues_training(key, zoo_workdir):
    run_folder = cartpole_run(key, zoo_workdir)
    trained = run_folder / "CartPole-v1.zip"
    before = algorithm_class(key).load(trained, device="cpu")
    args = train_args(key, "CartPole-v1", 256, "-i", str(trained), "--eval-freq", "-1", "-params", *TINY[key])
    result = run_module("sb3_trpo_ext.train", args, zoo_workdir)
    assert "Loading pretrained agent" in result.stdout
    continued_path = next(p for p in (zoo_workdir / "logs" / key).glob("CartPole-v1_*/CartPole-v1.zip") if p != trained)
    after = algorithm_class(key).load(continued_path, device="cpu")
    assert after._n_updates > before._n_updates  # the update counter carried over and kept counting


def test_cli_vine_trpo_trains_on_a_plain_subproc_vec_env(tmp_path):
    """``--vec-env subproc`` builds a plain SubprocVecEnv (no wrapper, no YAML change): the vine's branches run on it."""
    algorithm_class("vine_trpo")
    args = train_args("vine_trpo", "CartPole-v1", 512, "--vec-env", "subproc", "--eval-freq", "-1")
    run_module("sb3_trpo_ext.train", [*args, "-params", "n_envs:2", *TINY["vine_trpo"]], tmp_path)
    model = VINE.load(tmp_path / "logs" / "vine_trpo" / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert model._n_updates >= 1 and model.n_envs == 2
    assert model.num_timesteps > 512  # trunk plus branch simulator steps


def test_cli_trains_and_enjoys_a_continuous_task(tmp_path):
    """Pendulum-v1 (Box actions, gSDE as in the zoo entry) with trpo_ext."""
    run_module(
        "sb3_trpo_ext.train",
        train_args("trpo_ext", "Pendulum-v1", 512, "--eval-freq", "-1", "-params", *TINY["trpo_ext"]),
        tmp_path,
    )
    model = TRPO.load(tmp_path / "logs" / "trpo_ext" / "Pendulum-v1_1" / "Pendulum-v1.zip", device="cpu")
    assert model.use_sde and model.action_space.shape == (1,)
    args = ["--algo", "trpo_ext", "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "50", "--num-threads", "1"]
    run_module("sb3_trpo_ext.enjoy", args, tmp_path)


# ---------------------------------------------------------------------------------------------- plots


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_train_writes_a_png_from_our_logs(zoo_workdir, tmp_path):
    pytest.importorskip("seaborn")
    cartpole_run("trpo_ext", zoo_workdir)
    args = ["--algo", "trpo_ext", "--env", "CartPole-v1", "-f", str(zoo_workdir / "logs"), "-w", "2"]
    backend = {"MPLBACKEND": "module://sb3_trpo_ext.zoo.png_backend", "SB3_TRPO_EXT_PLOT_DIR": str(tmp_path)}
    run_module("rl_zoo3.plots.plot_train", args, tmp_path, **backend)
    assert is_png(tmp_path / "Training_Episodic_Reward.png")


def test_all_plots_writes_a_png_from_our_evaluations(zoo_workdir, tmp_path):
    for module in ("seaborn", "scipy", "pytablewriter"):
        pytest.importorskip(module)
    cartpole_run("trpo_ext", zoo_workdir)
    args = [
        "-a",
        "trpo_ext",
        "-e",
        "CartPole-v1",
        "-f",
        str(zoo_workdir / "logs"),
        "--no-million",
        "-o",
        str(tmp_path / "results"),
    ]
    backend = {"MPLBACKEND": "module://sb3_trpo_ext.zoo.png_backend", "SB3_TRPO_EXT_PLOT_DIR": str(tmp_path)}
    result = run_module("rl_zoo3.plots.all_plots", args, tmp_path, **backend)
    assert "TRPO_EXT" in result.stdout  # the results table
    assert is_png(tmp_path / "Results_CartPole-v1.png")


# ---------------------------------------------------------------------------------------------- optimize


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_samplers_give_constructor_keywords_that_the_converter_reproduces(key):
    algorithm = algorithm_class(key)
    sampler, converter = SAMPLERS[key], CONVERTERS[key]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    import gymnasium as gym

    for env_id, n_actions in (("CartPole-v1", 0), ("Pendulum-v1", 1)):
        env = DummyVecEnv([lambda env_id=env_id: gym.make(env_id)] * 2)
        for _ in range(4):
            trial = study.ask()
            hyperparams = sampler(trial, n_actions, 2, {})
            assert converter(trial.params) == hyperparams
            model = algorithm("MlpLstmPolicy" if key.endswith("_lstm") else "MlpPolicy", env, device="cpu", **hyperparams)
            assert model.n_steps == hyperparams["n_steps"]
            study.tell(trial, 0.0)
        env.close()


def study_trials(storage: str, study_name: str) -> list:
    if storage.endswith(".log"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    study = optuna.load_study(study_name=study_name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


OPTIMIZE_ARGS = ["-optimize", "--sampler", "random", "--pruner", "none", "--no-optim-plots", "--eval-episodes", "2"]
SAMPLER_PARAMS = {
    "trpo_ext": {"n_steps_pow", "target_kl", "cg_max_steps", "n_critic_updates", "net_arch", "activation_fn"},
    "natural_pg": {"n_steps_pow", "target_kl", "step_mode"},
    "vine_trpo": {"n_steps_pow", "n_rollout_states_pow", "n_actions_per_state", "rollout_length", "action_sampling"},
}


def check_trial_reloads(key: str, storage: str, study_name: str, workdir: Path, trial) -> None:
    """``--trial-id`` trains with a stored trial's hyperparameters, through our converter."""
    args = train_args(key, "CartPole-v1", 256, "--eval-freq", "-1", "--storage", storage, "--study-name", study_name)
    run_module("sb3_trpo_ext.train", [*args, "--trial-id", str(trial.number)], workdir)
    config_path = next((workdir / "logs" / key).glob("CartPole-v1_*/CartPole-v1/config.yml"))
    config = dict(yaml.load(config_path.read_text(), Loader=yaml.UnsafeLoader))
    assert config["n_steps"] == 2 ** trial.params["n_steps_pow"]
    assert config["gamma"] == pytest.approx(1 - trial.params["one_minus_gamma"])
    assert config["target_kl"] == pytest.approx(trial.params["target_kl"])


@pytest.mark.parametrize("key", ["natural_pg", "vine_trpo"])  # trpo_ext's sampler: the two-worker test below
def test_optimize_runs_two_trials_in_sqlite_and_a_trial_reloads(key, tmp_path):
    algorithm_class(key)
    storage, study_name = f"sqlite:///{tmp_path / 'study.db'}", f"{key}-cartpole"
    args = train_args(
        key, "CartPole-v1", 512, *OPTIMIZE_ARGS, "--n-trials", "2", "--storage", storage, "--study-name", study_name
    )
    run_module("sb3_trpo_ext.train", args, tmp_path)
    trials = study_trials(storage, study_name)
    assert len(trials) == 2
    assert all(SAMPLER_PARAMS[key] <= set(trial.params) for trial in trials)
    assert list((tmp_path / "logs" / key).glob("report_CartPole-v1_2-trials-512-*.csv"))
    check_trial_reloads(key, storage, study_name, tmp_path, trials[1])  # rl-zoo3 ignores --trial-id 0


def trial_values(storage: str, study_name: str) -> list[float]:
    return [trial.value for trial in study_trials(storage, study_name)]


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_optimize_gives_every_trial_a_finite_value(key, tmp_path):
    """
    rl-zoo3 schedules a trial's evaluations from ``-n``: the vine's callbacks, which see its trunk steps only, never
    reached them (every trial scored -inf). Our trial evaluation is scheduled in counted steps.
    """
    algorithm_class(key)
    storage, study_name = f"sqlite:///{tmp_path / 'study.db'}", f"{key}-finite"
    args = train_args(
        key, "CartPole-v1", 5000, *OPTIMIZE_ARGS, "--n-trials", "2", "--storage", storage, "--study-name", study_name
    )
    run_module("sb3_trpo_ext.train", args, tmp_path)
    values = trial_values(storage, study_name)
    assert len(values) == 2 and all(math.isfinite(value) for value in values), values


def docs_optimize_command() -> list[str]:
    """The first ``-optimize`` command of the rl-zoo3 docs page, as written there (line continuations joined)."""
    page = (REPO_ROOT / "docs" / "guide" / "rl_zoo.md").read_text().replace("\\\n", " ")
    line = next(line for line in page.splitlines() if line.startswith("python -m sb3_trpo_ext.train") and "-optimize" in line)
    return shlex.split(line)


def test_the_docs_optimize_command_scores_its_trials(tmp_path):
    """The rl-zoo3 page's tuning command, with its budget and trial count cut down and its database in tmp_path."""
    command = docs_optimize_command()
    assert command[:3] == ["python", "-m", "sb3_trpo_ext.train"] and "vine_trpo" in command
    algorithm_class("vine_trpo")
    replaced = {"--n-trials": "2", "-n": "3000", "--storage": f"sqlite:///{tmp_path / 'optuna.db'}"}
    args = command[3:]
    for option, value in replaced.items():
        args[args.index(option) + 1] = value
    run_module("sb3_trpo_ext.train", [*args, "--eval-episodes", "2", "--no-optim-plots", "--seed", "0"], tmp_path)
    study_name = args[args.index("--study-name") + 1]
    values = trial_values(replaced["--storage"], study_name)
    assert len(values) == 2 and all(math.isfinite(value) for value in values), values


def test_trial_evaluations_of_the_vine_are_scaled_by_the_trunks_share_and_others_are_not():
    vine = algorithm_class("vine_trpo")
    # CartPole-v1's entry: a 512-step trunk and 64 x 2 x 10 branch steps, 1,792 simulator steps per iteration
    model = vine("MlpPolicy", "CartPole-v1", n_steps=512, n_rollout_states=64, n_actions_per_state=2, rollout_length=10)
    assert calls_for_counted_steps(model, 50_000) == round(50_000 * 512 / 1792)
    assert calls_for_counted_steps(model, 100) == 512  # at most one evaluation per iteration
    assert calls_for_counted_steps(TRPO("MlpPolicy", "CartPole-v1"), 50_000) == 50_000


def test_plain_training_warns_when_the_vines_eval_freq_is_out_of_reach():
    vine = algorithm_class("vine_trpo")
    model = vine("MlpPolicy", "CartPole-v1", n_steps=512, n_rollout_states=64, n_actions_per_state=2, rollout_length=10)
    evaluation = EvalCallback(make_vec_env("CartPole-v1"), eval_freq=20_000)
    with pytest.warns(UserWarning, match="No evaluation will run: for vine_trpo, --eval-freq counts callback") as record:
        warn_if_never_evaluated(model, [evaluation], 20_000)  # 20,000 / (512 + 128) = 32 iterations, 16,384 calls
    assert "--eval-freq F x 0.286" in str(record[0].message)
    warn_if_never_evaluated(model, [EvalCallback(make_vec_env("CartPole-v1"), eval_freq=5_000)], 20_000)  # reached


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("target_kl:'0.01'", "-params evaluates each value as Python: write target_kl:0.01, without quotes"),
        ("n_stepz:64", "unknown keyword 'n_stepz' for TRPO (did you mean 'n_steps'?)"),
        ("target_kl:-1", "error: -params target_kl:-1 (overriding "),
    ],
)
def test_errors_in_params_overrides_name_params_not_the_yaml_file(override, expected, tmp_path):
    result = run_module("sb3_trpo_ext.train", train_args("trpo_ext", "CartPole-v1", 256, "-params", override), tmp_path,
                        expect_success=False)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr[result.stderr.index("error: ") :]
    assert expected in error and "YAML" not in error
    assert error.startswith("error: -params"), error.splitlines()[0]


def test_check_hyperparams_keeps_the_entrys_and_the_overrides_problems_apart():
    entry = {"policy": "MlpPolicy", "n_stepz": 64, "target_kl": "0.01"}
    with pytest.raises(HyperparameterError) as info:
        check_hyperparams(TRPO, entry, "CartPole-v1", "trpo_ext.yml", overrides={"target_kl": "0.01"})
    yaml_part, params_part = str(info.value).split("\n-params (the command line's overrides of trpo_ext.yml")
    assert yaml_part.startswith("trpo_ext.yml, entry 'CartPole-v1'") and "n_stepz" in yaml_part
    assert "target_kl" not in yaml_part and "'target_kl' must be float or None" in params_part


@pytest.mark.parametrize(("storage_kind", "n_trials"), [("sqlite", 2), ("journal", 1)])
def test_two_worker_processes_share_one_study(storage_kind, n_trials, tmp_path):
    """
    Distributed tuning of trpo_ext: two processes on one storage and study name, started together.

    sqlite (as a PostgreSQL URL would be): create the study once, then start the workers. A JournalStorage ``.log``
    file needs no set-up.
    """
    if storage_kind == "sqlite":
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
        optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    else:
        storage = str(tmp_path / "shared.log")
    workers = []
    for seed in ("1", "2"):
        args = ["--algo", "trpo_ext", "--env", "CartPole-v1", "-n", "512", "-f", f"logs{seed}", "--seed", seed]
        args += [
            "--num-threads",
            "1",
            *OPTIMIZE_ARGS,
            "--n-trials",
            str(n_trials),
            "--storage",
            storage,
            "--study-name",
            "shared",
        ]
        command = [sys.executable, "-m", "sb3_trpo_ext.train", *args]
        workers.append(
            subprocess.Popen(command, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=CLI_TIMEOUT)
        assert worker.returncode == 0, f"worker failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    trials = study_trials(storage, "shared")
    assert len(trials) >= 2 * n_trials
    assert all(SAMPLER_PARAMS["trpo_ext"] <= set(trial.params) for trial in trials)
    if storage_kind == "sqlite":
        check_trial_reloads("trpo_ext", storage, "shared", tmp_path, trials[1])


# ---------------------------------------------------------------------------------------------- rl-zoo3's own behaviour


def test_cli_env_without_entry_nor_default_exits_1_like_rl_zoo3(tmp_path):
    """rl-zoo3 raises ValueError("Hyperparameters not found for ...") there: status 1. Ours says it without a traceback."""
    (tmp_path / "cartpole_only.yml").write_text("CartPole-v1:\n  n_timesteps: 1000\n  policy: 'MlpPolicy'\n")
    args = train_args("trpo_ext", "Pendulum-v1", 256, "-conf", "cartpole_only.yml")
    result = run_module("sb3_trpo_ext.train", args, tmp_path, expect_success=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "cartpole_only.yml has no entry for Pendulum-v1 and no 'default' entry" in result.stderr
    assert "its entries: CartPole-v1" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("logs/**/*.zip"))


@pytest.mark.parametrize("key", UNMASKED_KEYS)
def test_cli_trains_an_entry_whose_default_batch_size_exceeds_its_rollout(key, tmp_path):
    """n_steps: 32 with the default batch_size (128), as in rl-zoo3's test_default_hyperparameters: a warning, no error."""
    cls = algorithm_class(key)
    policy = "MlpLstmPolicy" if key.endswith("_lstm") else "MlpPolicy"
    entry = f"default:\n  policy: '{policy}'\n  n_timesteps: 200\n  n_steps: 32\n"
    if key == "vine_trpo":
        entry += "  n_rollout_states: 16\n"  # the vine's own limit: at most n_steps * n_envs states (default 64)
    (tmp_path / "default_only.yml").write_text(entry)
    run_module("sb3_trpo_ext.train", train_args(key, "CartPole-v1", 100, "-conf", "default_only.yml"), tmp_path)
    model = cls.load(tmp_path / "logs" / key / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert model.n_steps == 32 and model.batch_size == 128 and model.num_timesteps >= 100
