"""
The "Starting a cluster" steps of docs/guide/distributed.md as a user runs them, with Ray's token authentication on:
``ray get-auth-token --generate`` and ``RAY_AUTH_MODE=token ray start --head --port=PORT`` in a home that holds the
cluster's token (``~/.ray/auth_token``), ``ray status``, then clients that join by address from a fresh shell
(``RAY_AUTH_MODE`` unset): a ``RayVecEnv(..., ray_address=...)`` and ``python -m sb3_trpo_ext.train ... --vec-env ray
--ray-address ...``. A client with another token gets our :class:`~sb3_trpo_ext.distributed.RayAuthenticationError`.

The head runs with ``--block`` (so that the test stops its own processes, by their id: ``ray stop`` would stop every
Ray process of the host), 2 CPUs, no dashboard and a session folder of its own; everything else is the page's command.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from sb3_trpo_ext.distributed.cluster import authentication_advice  # noqa: E402

pytestmark = pytest.mark.timeout(600)

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
"""The ``ray`` command of this environment."""

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@dataclass
class Head:
    """A head node started by ``ray start --head``, and the environment of a fresh shell on its machine."""

    address: str
    home: Path
    token: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]


def shell_env(home: Path, **extra: str) -> dict[str, str]:
    """:return: a fresh shell's environment with ``HOME=home``: none of Ray's authentication variables unless given"""
    env = {key: value for key, value in os.environ.items() if key not in AUTH_VARS}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_token(home: Path, token: str) -> None:
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    (home / ".ray" / "auth_token").write_text(token)


def run(
    command: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wait_for_head(head: Head, log: Path, timeout_s: float = 120) -> None:
    """Wait until the head answers ``RAY_AUTH_MODE=token ray status`` (the page's check) with its 2 CPUs."""
    deadline, status = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise AssertionError(f"ray start --head exited with {head.process.returncode}:\n{log.read_text()[-3000:]}")
        status = run([*RAY, "status", "--address", head.address], dict(head.env, RAY_AUTH_MODE="token"), timeout=60)
        if status.returncode == 0 and "2.0 CPU" in status.stdout:
            return
        time.sleep(2)
    raise AssertionError(f"the head did not answer ray status: {status}\n{log.read_text()[-3000:]}")


def stop_head(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to our ``ray start --block`` (it stops the node's processes), then SIGKILL to what is left of its group."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group start_new_session gave our ray start, nothing else
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def head(isolated_network: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """The page's head node, in a home of its own that holds the cluster's token (the real ~/.ray is not touched)."""
    home = tmp_path_factory.mktemp("home")
    token = secrets.token_hex(32)
    write_token(home, token)
    env = shell_env(home)
    generated = run([*RAY, "get-auth-token", "--generate"], env)  # the page's first step: keeps the existing token
    assert generated.returncode == 0 and generated.stdout.strip() == token, generated
    session_dir = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths must stay short
    log = home / "head.log"
    port = free_port()
    command = [*RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    command += [f"--temp-dir={session_dir}", "--block"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=dict(env, RAY_AUTH_MODE="token"), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    started = Head(f"127.0.0.1:{port}", home, token, env, process)
    try:
        wait_for_head(started, log)
        yield started
    finally:
        stop_head(process)
        shutil.rmtree(session_dir, ignore_errors=True)


CLIENT = """
import sys
import numpy as np
from sb3_trpo_ext.distributed import RayVecEnv
try:
    env = RayVecEnv("CartPole-v1", n_envs=2, envs_per_actor=2, seed=0, ray_address=sys.argv[1], num_cpus_per_actor=0.5)
except ConnectionError as error:  # RayAuthenticationError is one; Ray's own refusal too
    print(f"{type(error).__name__}: {error}")
    sys.exit(3)
env.reset()
for _ in range(20):
    env.step(np.array([env.action_space.sample() for _ in range(2)]))
print("stepped", env.num_envs, "envs on node", env.places[0].node_ip)
env.close()
"""


def test_the_page_s_steps_a_ray_vec_env_joins_by_address_with_the_token_file(head: Head) -> None:
    client = run([sys.executable, "-c", CLIENT, head.address], head.env, timeout=180)
    assert client.returncode == 0, f"{client.stdout[-2000:]}\n{client.stderr[-4000:]}"
    assert "stepped 2 envs on node 127.0.0.1" in client.stdout


def test_the_page_s_zoo_command_joins_by_address_and_saves_a_model(head: Head, tmp_path: Path) -> None:
    if importlib.util.find_spec("rl_zoo3") is None:
        pytest.skip("rl-zoo3 is not installed: pip install 'sb3-trpo-ext[zoo]'")
    command = [sys.executable, "-m", "sb3_trpo_ext.train", "--algo", "vine_trpo", "--env", "Hopper-v5"]
    command += ["--vec-env", "ray", "--ray-address", head.address, "-n", "2000", "-f", "logs", "--seed", "0"]
    command += ["--num-threads", "1"]
    result = run(command, head.env, timeout=420, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    model = tmp_path / "logs" / "vine_trpo" / "Hopper-v5_1" / "Hopper-v5.zip"
    assert model.is_file() and "policy.pth" in zipfile.ZipFile(model).namelist()


def test_a_client_with_another_token_gets_our_error_naming_the_file_and_the_fix(head: Head, tmp_path: Path) -> None:
    write_token(tmp_path, secrets.token_hex(32))  # e.g. the token an earlier local ray.init() left in ~/.ray
    # Ray retries the refused connection for about 20 s (RAY_NUM_REDIS_GET_RETRIES=20); 2 tries say the same
    env = shell_env(tmp_path, RAY_NUM_REDIS_GET_RETRIES="2")
    client = run([sys.executable, "-c", CLIENT, head.address], env, timeout=180)
    assert client.returncode == 3, f"{client.stdout[-2000:]}\n{client.stderr[-4000:]}"
    message = client.stdout
    assert message.startswith("RayAuthenticationError: ")
    assert f"The Ray cluster at {head.address} refused this process: its token authentication is on" in message
    assert f"presented the token of the file {tmp_path / '.ray' / 'auth_token'}, which is not the cluster's" in message
    assert "ray get-auth-token" in message and "RAY_AUTH_TOKEN" in message and "RAY_AUTH_TOKEN_PATH" in message


def test_the_advice_says_where_this_process_looked_for_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    no_file = f"{tmp_path / '.ray' / 'auth_token'} does not exist"
    assert f"has no token (RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are not set and {no_file})" in authentication_advice("h:1")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    missing = f"RAY_AUTH_TOKEN_PATH names {tmp_path / 'missing'}, which does not exist or is empty"
    assert missing in authentication_advice("h:1")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert "presented the token of the RAY_AUTH_TOKEN environment variable" in authentication_advice("h:1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    advice = authentication_advice("h:1")
    assert "RAY_AUTH_MODE=disabled in this process, so it presented no token" in advice
    assert "unset RAY_AUTH_MODE (or set it to token)" in advice
