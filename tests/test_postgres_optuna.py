"""
Distributed tuning on a real PostgreSQL server, the way the README says: one study, several worker processes.

A throwaway server (``initdb`` + ``pg_ctl``, trust authentication, TCP on a free port of 127.0.0.1 only) runs in a
temporary folder for this module and is stopped afterwards, also when a test fails. As root (CI), the server runs as
the ``postgres`` user (``initdb`` and ``pg_ctl`` refuse root). Skipped only where no PostgreSQL server binaries exist;
the driver (psycopg2, from the ``zoo`` extra) must be installed.
"""

import glob
import itertools
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("rl_zoo3")


def postgres_bin_dir() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``createdb``: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = [Path(folder) for folder in glob.glob("/usr/lib/postgresql/*/bin") if Path(folder).parent.name.isdigit()]
    candidates += sorted(versions, key=lambda folder: int(folder.parent.name), reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres", "createdb")):
            return folder
    return None


PG_BIN = postgres_bin_dir()
pytestmark = pytest.mark.skipif(
    PG_BIN is None, reason="no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in /usr/lib/postgresql"
)

WORKER_TIMEOUT = 300
# what each worker trains per trial: a few CartPole iterations, one evaluation at the end
WORKER_ARGS = [
    "--algo", "trpo_ext", "--env", "CartPole-v1", "-n", "2048", "--num-threads", "1",
    "-optimize", "--n-jobs", "1", "--n-startup-trials", "2", "--n-evaluations", "1", "--eval-episodes", "2",
    "--pruner", "none", "--no-optim-plots",
]  # fmt: skip
SAMPLER_PARAMS = {"n_steps_pow", "target_kl", "cg_max_steps", "n_critic_updates", "net_arch", "activation_fn"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL server in ``base`` (owned by the user it runs as)."""

    def __init__(self, base: Path, bin_dir: Path) -> None:
        self.base = base
        self.bin_dir = bin_dir
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = 0
        self.user: str | None = None  # the account the server runs as, when we are root
        if os.geteuid() == 0:
            # initdb and pg_ctl refuse root; ``nobody`` where the PostgreSQL packages made no postgres account
            self.user = next(name for name in ("postgres", "nobody") if self._has_account(name))
            account = pwd.getpwnam(self.user)
            os.chown(base, account.pw_uid, account.pw_gid)

    @staticmethod
    def _has_account(name: str) -> bool:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def server_command(self, *args: str) -> subprocess.CompletedProcess:
        """Run a server binary (initdb, pg_ctl), as ``self.user`` when we are root."""
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            if shutil.which("runuser"):
                command = ["runuser", "-u", self.user, "--", *command]
            else:
                command = ["su", self.user, "-s", "/bin/sh", "-c", shlex.join(command)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.base)

    def start(self) -> None:
        result = self.server_command("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                     "--no-locale", "--no-sync")  # fmt: skip
        assert result.returncode == 0, f"initdb failed:\n{result.stdout}\n{result.stderr}"
        base_conf = (self.data / "postgresql.conf").read_text()
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = free_port()
            settings = [
                "listen_addresses = '127.0.0.1'",
                f"port = {self.port}",
                "unix_socket_directories = ''",  # TCP only: no socket in /var/run/postgresql needed
                "fsync = off",
                "synchronous_commit = off",
                "full_page_writes = off",
                "shared_buffers = 32MB",
            ]
            (self.data / "postgresql.conf").write_text(base_conf + "\n" + "\n".join(settings) + "\n")
            result = self.server_command("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
            if result.returncode == 0:
                return
        raise AssertionError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{self.server_log()}")

    def server_log(self) -> str:
        return self.log.read_text()[-3000:] if self.log.is_file() else ""

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self.server_command("pg_ctl", "-D", str(self.data), "-m", "immediate", "-t", "30", "stop")
        pid_file = self.data / "postmaster.pid"
        if pid_file.is_file():  # pg_ctl did not stop it: kill the postmaster we started
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def create_database(self, name: str) -> str:
        """:return: the URL of a new, empty database ``name``"""
        command = [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"createdb failed:\n{result.stderr}\n{self.server_log()}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    assert PG_BIN is not None
    base = Path(tempfile.mkdtemp(prefix="sb3_trpo_ext_pg_"))
    server = PostgresServer(base, PG_BIN)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg", "postgresql+psycopg2"])
def test_the_postgresql_drivers_are_installed(scheme):
    """
    Without a driver, Optuna fails with "Failed to import DB access module": the zoo extra brings psycopg (what
    SQLAlchemy >= 2.1 uses for ``postgresql://``) and psycopg2 (what older SQLAlchemy uses).
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{scheme}://user@127.0.0.1:1/optuna")  # imports the driver, connects to nothing
    assert engine.dialect.driver in ("psycopg", "psycopg2")
    engine.dispose()


def child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")


def run_workers(storage: str, study_name: str, n_trials: int, workdir: Path) -> list[str]:
    """Start two workers on the same study at the same time, wait for both; :return: their outputs"""
    workers = []
    for seed in (1, 2):
        args = [*WORKER_ARGS, "--n-trials", str(n_trials), "--seed", str(seed), "-f", f"logs{seed}"]
        command = [sys.executable, "-m", "sb3_trpo_ext.train", *args, "--storage", storage, "--study-name", study_name]
        workers.append(
            subprocess.Popen(
                command, cwd=workdir, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        for worker in workers:
            output, _ = worker.communicate(timeout=WORKER_TIMEOUT)
            outputs.append(output)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for seed, (worker, output) in enumerate(zip(workers, outputs, strict=True), start=1):
        assert worker.returncode == 0, f"worker {seed} failed:\n{output[-6000:]}"
    return outputs


def check_study(storage: str, study_name: str, n_trials: int, workdir: Path) -> list:
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    # --n-trials counts each worker's own trials: 2 * n_trials in the study only if both workers ran theirs
    assert len(trials) == 2 * n_trials, [trial.state for trial in trials]
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials), [trial.state for trial in trials]
    assert all(SAMPLER_PARAMS <= set(trial.params) and trial.value is not None for trial in trials)
    assert sorted(trial.number for trial in trials) == list(range(2 * n_trials))
    for seed in (1, 2):  # each worker wrote its report
        assert list((workdir / f"logs{seed}" / "trpo_ext").glob("report_CartPole-v1_*.csv")), f"worker {seed}: no report"
    return trials


def test_two_workers_share_a_study_created_the_readme_way(postgres, tmp_path):
    """``optuna create-study ... --direction maximize``, then ``python -m sb3_trpo_ext.train -optimize`` twice at once."""
    storage, study_name = postgres.create_database("optuna"), "cartpole-trpo-ext"
    optuna_cli = Path(sys.executable).parent / "optuna"
    assert optuna_cli.is_file(), "optuna's console script is missing next to the interpreter"
    command = [str(optuna_cli), "create-study", "--storage", storage, "--study-name", study_name, "--direction", "maximize"]
    created = subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env())
    assert created.returncode == 0, f"optuna create-study failed:\n{created.stdout}\n{created.stderr}"
    n_trials = 2
    run_workers(storage, study_name, n_trials, tmp_path)
    trials = check_study(storage, study_name, n_trials, tmp_path)
    # the two workers ran at the same time: a trial started before another one finished (the worker ran them in turn)
    spans = sorted((trial.datetime_start, trial.datetime_complete) for trial in trials)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    assert "command" in optuna.load_study(study_name=study_name, storage=storage).user_attrs


def test_two_workers_start_together_on_a_fresh_database(postgres, tmp_path):
    """Without ``optuna create-study``: both workers create Optuna's tables at once; neither may fail on the race."""
    storage, study_name = postgres.create_database("optuna_fresh"), "cartpole-fresh"
    run_workers(storage, study_name, 1, tmp_path)
    check_study(storage, study_name, 1, tmp_path)


RACER = """
import sys, time
from pathlib import Path
import optuna
from sb3_trpo_ext.zoo.exp_manager import prepare_study
storage, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
prepare_study(storage, "raced")
optuna.create_study(storage=storage, study_name="raced", load_if_exists=True, direction="maximize")  # as rl-zoo3 does
print("ok")
"""


N_RACERS = 3


def test_prepare_study_survives_processes_racing_on_a_fresh_database(postgres, tmp_path):
    """
    Three processes open a fresh database at the same instant. Without :func:`prepare_study`, Optuna's table creation
    fails in some of them (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``, in about
    a third of the processes when two race); with it, none fails.
    """
    storage = postgres.create_database("optuna_raced")
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, storage, str(tmp_path / f"ready{index}"), str(go)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(N_RACERS)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{index}").exists() for index in range(N_RACERS)):
            assert time.monotonic() < deadline and all(racer.poll() is None for racer in racers), "a racer did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [racer.communicate(timeout=120)[0] for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    for racer, output in zip(racers, outputs, strict=True):
        assert racer.returncode == 0 and output.strip().endswith("ok"), output[-3000:]
    assert optuna.load_study(study_name="raced", storage=storage).direction == optuna.study.StudyDirection.MAXIMIZE
