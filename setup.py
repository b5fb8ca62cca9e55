"""
Build step that ships the top-level ``hyperparams/`` folder inside the package.

Everything else is configured in pyproject.toml. The YAML files live in one place only, the top-level
``hyperparams/`` (where users look, and what an editable install or a source checkout reads). When a wheel is built
(directly or from the sdist, which carries ``hyperparams/`` through MANIFEST.in), they are copied into the build as
``sb3_trpo_ext/hyperparams/``; :func:`sb3_trpo_ext.zoo.registration.hyperparams_folder` finds that copy in a wheel
install.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE_FOLDER = Path(__file__).resolve().parent / "hyperparams"
PACKAGED_FOLDER = ("sb3_trpo_ext", "hyperparams")  # inside the build, relative to build_lib


class BuildPyWithHyperparams(build_py):
    """``build_py`` that also copies ``hyperparams/*.yml`` to ``sb3_trpo_ext/hyperparams/`` in the build."""

    def _hyperparams_files(self) -> list[tuple[Path, Path]]:
        if not SOURCE_FOLDER.is_dir():
            raise FileNotFoundError(f"{SOURCE_FOLDER} is missing: the sdist must include hyperparams/ (MANIFEST.in)")
        files = sorted(SOURCE_FOLDER.glob("*.yml"))
        if not files:
            raise FileNotFoundError(f"no *.yml files in {SOURCE_FOLDER}")
        target = Path(self.build_lib).joinpath(*PACKAGED_FOLDER)
        return [(source, target / source.name) for source in files]

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the top-level folder itself
            return
        for source, target in self._hyperparams_files():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(target) for _, target in self._hyperparams_files()]


setup(cmdclass={"build_py": BuildPyWithHyperparams})
