"""
A wheel install runs the zoo commands without ``-conf``: the YAML of the top-level ``hyperparams/`` ships in the wheel.

The source tree is copied to a temporary folder (nothing is written into the repository); from the copy an sdist is
built, and from the sdist a wheel (the path ``pip install sb3-trpo-ext`` takes from an sdist; a wheel built straight
from the tree is checked too). The wheel is installed into a fresh virtualenv that borrows the test environment's
dependencies through a ``.pth`` line (no download), and every command runs from outside the repository, so the
wheel's ``sb3_trpo_ext`` is the one imported, not the editable install of the repository.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rl_zoo3")

REPO_ROOT = Path(__file__).resolve().parents[1]
YAML_FILES = sorted(path.name for path in (REPO_ROOT / "hyperparams").glob("*.yml"))
TIMEOUT = 300
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".*_cache", "*.egg-info", "__pycache__", "build", "dist", "logs", "runs", "demo_output", "output"
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a command run in the fresh virtualenv: nothing pointing back at the repository."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.pop("SB3_TRPO_EXT_HYPERPARAMS", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
    env.update(extra)
    return env


def run(command: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=clean_env(**extra_env), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def pip_wheel(source: Path, out: Path, cwd: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir"]
    run([*command, "--disable-pip-version-check", "-w", str(out), str(source)], cwd)
    (wheel,) = out.glob("sb3_trpo_ext-*.whl")
    return wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist, a wheel built from it and a wheel built from the source tree."""
    root = tmp_path_factory.mktemp("wheel_build")
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=IGNORED)
    sdist_dir = root / "sdist"
    hook = f"from setuptools import build_meta; print(build_meta.build_sdist({str(sdist_dir)!r}))"
    run([sys.executable, "-c", hook], source)
    (sdist,) = sdist_dir.glob("sb3_trpo_ext-*.tar.gz")
    return {
        "sdist": sdist,
        "wheel": pip_wheel(sdist, root / "from_sdist", root),
        "tree_wheel": pip_wheel(source, root / "from_tree", root),
    }


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel built from the sdist; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel_venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root)
    bin_dir = root / "venv" / "bin"
    python = bin_dir / "python"
    paths = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)
    site_packages = Path(paths.stdout.strip())
    assert site_packages.is_relative_to(root / "venv")
    # the test environment's dependencies, after the venv's own site-packages (a plain path line: the .pth files
    # there, among them the editable install's finder, are not processed)
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    command = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir"]
    run([*command, "--disable-pip-version-check", str(built["wheel"])], root)
    return bin_dir


def test_sdist_and_wheels_carry_the_hyperparams_of_the_top_level_folder(built):
    assert {"natural_pg.yml", "trpo_ext.yml", "vine_trpo.yml", "trpo_mask.yml", "natural_pg_mask.yml"} <= set(YAML_FILES)
    with tarfile.open(built["sdist"]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        for name in YAML_FILES:
            member = sdist.extractfile(f"{top}/hyperparams/{name}")
            assert member is not None and member.read() == (REPO_ROOT / "hyperparams" / name).read_bytes()
    for key in ("wheel", "tree_wheel"):
        with zipfile.ZipFile(built[key]) as wheel:
            names = wheel.namelist()
            packaged = sorted(name.split("/")[-1] for name in names if name.startswith("sb3_trpo_ext/hyperparams/"))
            assert packaged == YAML_FILES, f"{built[key].name}: {packaged}"
            for name in YAML_FILES:
                assert wheel.read(f"sb3_trpo_ext/hyperparams/{name}") == (REPO_ROOT / "hyperparams" / name).read_bytes()
            assert not any(name.startswith("hyperparams/") for name in names)  # inside the package, not top-level
            record = wheel.read(next(name for name in names if name.endswith(".dist-info/RECORD"))).decode()
            assert "sb3_trpo_ext/hyperparams/trpo_ext.yml," in record  # uninstalled with the package


def test_the_venv_imports_the_wheel_and_finds_its_packaged_hyperparams(venv, tmp_path):
    probe = (
        "import sb3_trpo_ext; from sb3_trpo_ext.zoo.registration import default_config, hyperparams_folder;"
        "print(sb3_trpo_ext.__file__); print(hyperparams_folder()); print(default_config('trpo_ext'))"
    )
    package_file, folder, config = run([str(venv / "python"), "-c", probe], tmp_path).stdout.split()
    venv_root = venv.parent.resolve()
    assert Path(package_file).resolve().is_relative_to(venv_root), package_file
    assert not Path(package_file).resolve().is_relative_to(REPO_ROOT)
    assert Path(folder) == Path(package_file).parent / "hyperparams"
    assert Path(config) == Path(folder) / "trpo_ext.yml"
    # the override still wins
    override = tmp_path / "my_hyperparams"
    override.mkdir()
    result = run([str(venv / "python"), "-c", probe], tmp_path, SB3_TRPO_EXT_HYPERPARAMS=str(override))
    assert Path(result.stdout.split()[1]) == override


def test_console_script_trains_cartpole_from_a_wheel_install_without_conf(venv, tmp_path):
    script = venv / "sb3-trpo-ext-train"
    assert str(venv / "python") in script.read_text()  # the console script runs the venv's interpreter
    args = ["--algo", "trpo_ext", "--env", "CartPole-v1", "-n", "2000", "-f", "logs", "--seed", "0", "--num-threads", "1"]
    result = run([str(script), *args, "--eval-freq", "-1"], tmp_path)
    run_dir = tmp_path / "logs" / "trpo_ext" / "CartPole-v1_1"
    model = run_dir / "CartPole-v1.zip"
    assert model.is_file() and zipfile.is_zipfile(model), f"no model written:\n{result.stdout[-3000:]}"
    # the CartPole-v1 entry of the packaged trpo_ext.yml was used (not defaults)
    entry = yaml.safe_load((REPO_ROOT / "hyperparams" / "trpo_ext.yml").read_text())["CartPole-v1"]
    config = dict(yaml.load((run_dir / "CartPole-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    assert config["n_steps"] == entry["n_steps"] and config["n_critic_updates"] == entry["n_critic_updates"]
    assert config["n_envs"] == entry["n_envs"]
    # the model loads with the wheel's TRPO
    load = "from sb3_trpo_ext import TRPO; import sys; print(TRPO.load(sys.argv[1], device='cpu').num_timesteps)"
    assert int(run([str(venv / "python"), "-c", load, str(model)], tmp_path).stdout.split()[-1]) >= 2000
