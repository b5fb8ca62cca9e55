"""
The documentation site: it builds with warnings as errors and every cross-reference checked (``sphinx -W -n``, as
``make docs`` runs it), every constructor keyword of the three algorithms is a documented ``:param:`` of its class
and appears in the Parameters list of its built page, and the README's generated sections reach the results page.

The build needs the ``docs`` extra (``pip install -e ".[docs]"`` or ``make docs``); without Sphinx the build tests
are skipped, saying so.
"""

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stable_baselines3.common.logger import KVWriter, Logger

from reporting import sections
from sb3_trpo_ext import TRPO, MaskableNaturalPG, MaskableTRPO, NaturalPG, RecurrentNaturalPG, RecurrentTRPO, VineTRPO

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = {TRPO: "modules/trpo.html", VineTRPO: "modules/vine_trpo.html", NaturalPG: "modules/natural_pg.html"}
PAGES |= {RecurrentTRPO: "modules/recurrent_trpo.html", RecurrentNaturalPG: "modules/recurrent_trpo.html"}
PAGES |= {MaskableTRPO: "modules/maskable.html", MaskableNaturalPG: "modules/maskable.html"}
NOT_KEYWORDS = {"self", "_init_setup_model"}
BUILD_TIMEOUT = 300


def constructor_keywords(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in NOT_KEYWORDS]


def docstring_params(cls: type) -> set[str]:
    return set(re.findall(r"^\s*:param (\w+):", inspect.getdoc(cls) or "", flags=re.MULTILINE))


def matching_end(text: str, start: int, tag: str) -> int:
    """:return: where the element ``tag`` whose start tag ends at ``start`` is closed (nested ones counted)"""
    depth = 1
    for match in re.finditer(rf"<(/?){tag}\b", text[start:]):
        depth += -1 if match.group(1) else 1
        if depth == 0:
            return start + match.start()
    raise AssertionError(f"unclosed <{tag}>")


def page_parameters(page: str, anchor: str) -> list[str]:
    """
    The names in the "Parameters" field of the object documented at ``id="anchor"`` (the class's own field list,
    before any member's).
    """
    start = page.index(f'id="{anchor}"')
    first_member = page.find('<dl class="py ', start)
    field = re.compile(r'<dt class="field-\w+">Parameters<span class="colon">:</span></dt>\s*<dd class="field-\w+">')
    match = field.search(page, start)
    assert match is not None, f"no Parameters field after {anchor}"
    assert first_member == -1 or match.start() < first_member, f"the Parameters field after {anchor} is a member's"
    body = page[match.end() : matching_end(page, match.end(), "dd")]
    return [html.unescape(name) for name in re.findall(r"(?:<li>|^)<p><strong>([^<]+)</strong>", body)]


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as ``make docs`` builds it, into a temporary folder."""
    pytest.importorskip(
        "sphinx", reason='Sphinx is not installed: pip install -e ".[docs]" (or make docs) to build and check the docs'
    )
    out = tmp_path_factory.mktemp("docs_html")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html"]
    command += ["-d", str(out / ".doctrees"), str(DOCS), str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 0, f"sphinx -W -n failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return out


def test_docs_build_with_warnings_as_errors_and_every_reference_resolved(built_docs: Path) -> None:
    for page in ["index.html", *PAGES.values(), "misc/results.html", "misc/design.html", "misc/changelog.html"]:
        assert (built_docs / page).is_file(), f"{page} was not built"
    changelog = (built_docs / "misc" / "changelog.html").read_text()
    assert "Unreleased" in changelog and "0.1.0" in changelog  # CHANGELOG.md is included


@pytest.mark.parametrize("cls", list(PAGES), ids=lambda cls: cls.__name__)
def test_every_constructor_keyword_is_a_documented_param_of_the_class(cls: type) -> None:
    keywords = constructor_keywords(cls)
    assert len(keywords) > 20
    missing = [name for name in keywords if name not in docstring_params(cls)]
    assert not missing, f"{cls.__name__}'s docstring has no ':param NAME:' line for {missing}"


@pytest.mark.parametrize("cls", list(PAGES), ids=lambda cls: cls.__name__)
def test_every_constructor_keyword_is_in_the_parameters_list_of_its_page(built_docs: Path, cls: type) -> None:
    page = (built_docs / PAGES[cls]).read_text()
    documented = page_parameters(page, f"sb3_trpo_ext.{cls.__name__}")
    missing = [name for name in constructor_keywords(cls) if name not in documented]
    assert not missing, f"{PAGES[cls]}'s Parameters list lacks {missing}"


def test_results_page_shows_the_benchmark_images(built_docs: Path) -> None:
    page = (built_docs / "misc" / "results.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) >= 10
    for src in images:
        assert (built_docs / "misc" / src).resolve().is_file(), f"the results page shows a missing image {src}"


def test_readme_sections_reach_the_docs_page_with_paths_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sections, "ROOT", str(tmp_path))  # a repository of its own: README.md, hyperparams/, docs/misc/
    (tmp_path / "hyperparams").mkdir()
    (tmp_path / "hyperparams" / "trpo_ext.yml").write_text("default: {}\n")
    section = (
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n![curves](benchmarks/results/figure4.png)\n"
        "files in [`benchmarks/results/demo_seeds/`](benchmarks/results/demo_seeds/), the [YAML](hyperparams/trpo_ext.yml),"
        " [paper](https://arxiv.org/abs/1502.05477)"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n<!-- toy:start -->\n{section}\n<!-- toy:end -->\nend\n")
    docs = tmp_path / "docs" / "misc" / "results.md"
    docs.parent.mkdir(parents=True)
    docs.write_text("# Toy\n\n<!-- toy:start -->\nold\n<!-- toy:end -->\n\n<!-- other:start -->\n<!-- other:end -->\n")

    assert sections.sync_docs_results(str(readme), str(docs)) == ["toy"]
    content = docs.read_text()
    assert "old" not in content and "| 1 | 2 |" in content
    assert "![curves](../../benchmarks/results/figure4.png)" in content  # Sphinx copies the image from there
    assert "[YAML](../../hyperparams/trpo_ext.yml)" in content  # a file: a download link
    assert "files in `benchmarks/results/demo_seeds/`," in content  # a folder: its text (Sphinx cannot link it)
    assert "[paper](https://arxiv.org/abs/1502.05477)" in content
    assert content.endswith("<!-- toy:end -->\n\n<!-- other:start -->\n<!-- other:end -->\n")
    assert readme.read_text().endswith("<!-- toy:end -->\nend\n")  # the README is only read
    assert sections.sync_docs_results(str(readme), str(docs)) == ["toy"] and docs.read_text() == content  # idempotent


# ---------------------------------------------------------------------------------------------------- what pages claim


def docs_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_multi_binary_action_rows_say_one_dimensional_only() -> None:
    """SB3's distribution refuses a multi-dimensional MultiBinary action space: no table may mark it plainly ✔."""
    rows = [
        (page.name, line)
        for page in docs_pages()
        for line in page.read_text().splitlines()
        if line.startswith("| MultiBinary |")
    ]
    assert len(rows) >= 3
    for page, row in rows:
        action = row.split("|")[2]
        assert "1-D" in action and "flatten" in action, f"{page}: {row}"


class _CollectKeys(KVWriter):
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.keys.update(key_values)

    def close(self) -> None:
        pass


SB3_LOGGED = {"time/fps", "time/iterations", "time/time_elapsed", "time/total_timesteps", "rollout/ep_rew_mean",
              "rollout/ep_len_mean"}  # fmt: skip
"""What SB3's on-policy loop logs itself (documented by SB3)."""


@pytest.mark.parametrize("cls", [TRPO, VineTRPO, NaturalPG], ids=lambda cls: cls.__name__)  # the masked classes log theirs
def test_every_key_our_algorithms_log_is_in_the_quickstarts_list(cls: type) -> None:
    extra = dict(n_rollout_states=4, rollout_length=3) if cls is VineTRPO else {}
    model = cls("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_critic_updates=1, seed=0, **extra)
    collector = _CollectKeys()
    model.set_logger(Logger(folder=None, output_formats=[collector]))
    model.learn(128)
    text = (DOCS / "guide" / "quickstart.md").read_text()
    ours = sorted(collector.keys - SB3_LOGGED)
    assert "time/policy_step_s" in ours
    missing = [key for key in ours if f"`{key}`" not in text and f"`{key.split('/', 1)[1]}`" not in text]
    assert not missing, f"docs/guide/quickstart.md does not list {missing}"


def test_the_quickstarts_backend_line_is_what_verbose_prints(capsys: pytest.CaptureFixture) -> None:
    TRPO("MlpPolicy", "CartPole-v1", verbose=1)
    printed = next(line for line in capsys.readouterr().out.splitlines() if " backends: " in line)
    text = " ".join((DOCS / "guide" / "quickstart.md").read_text().split())  # the page wraps the line
    assert f"`{printed}`" in text, printed
