"""
``python -m sb3_trpo_ext.train ... --vec-env ray`` as a user types it: ``vine_trpo`` (trunk on a RayVecEnv, branches
on a RayBranchPool) joining a running Ray instance with ``--ray-address``, and ``trpo_ext`` on a local instance of its
own (run first, before the module's instance starts). Each run exits 0 and saves its model.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
if importlib.util.find_spec("rl_zoo3") is None:  # not imported here: its import patches gymnasium's TimeLimit
    pytest.skip("rl-zoo3 is not installed: pip install 'sb3-trpo-ext[zoo]'", allow_module_level=True)

pytestmark = pytest.mark.timeout(300)

COMMON = ["--env", "CartPole-v1", "-n", "2000", "-f", "logs", "--seed", "0", "--num-threads", "1", "--eval-freq", "-1"]


def train(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "sb3_trpo_ext.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, f"train {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def saved_model(cwd: Path, algo: str) -> Path:
    path = cwd / "logs" / algo / "CartPole-v1_1" / "CartPole-v1.zip"
    assert path.is_file() and "policy.pth" in zipfile.ZipFile(path).namelist()
    return path


def test_trpo_ext_with_vec_env_ray_on_a_local_instance_saves_a_model(tmp_path: Path) -> None:
    train(["--algo", "trpo_ext", *COMMON, "--vec-env", "ray", "-params", "n_envs:2", "n_steps:256", "batch_size:64"], tmp_path)
    saved_model(tmp_path, "trpo_ext")


def test_vine_trpo_with_vec_env_ray_joins_the_cluster_and_saves_a_model(local_ray: None, tmp_path: Path) -> None:
    address = ray.get_runtime_context().gcs_address  # the module's local instance, on 127.0.0.1
    assert address.startswith("127.0.0.1:")
    pool = "branch_pool:dict(n_actors=2, num_cpus_per_actor=0.25)"
    params = ["n_envs:2", "n_steps:128", "batch_size:64", "n_rollout_states:8", "rollout_length:5", pool]
    result = train(
        ["--algo", "vine_trpo", *COMMON, "--vec-env", "ray", "--ray-address", address, "-params", *params], tmp_path
    )
    assert "rollout/" in result.stdout and "branch_retries" in result.stdout
    saved_model(tmp_path, "vine_trpo")
