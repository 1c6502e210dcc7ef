"""The documentation site builds with --strict (a broken link or anchor, a page missing from
the navigation, a public function without a docstring all fail it), and its generated reference
pages hold what the code defines."""

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from lmjax.config import Config
from lmjax.config_schema import describe

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  out = tmp_path_factory.mktemp("site")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
  result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  return out


def test_the_site_builds_strict_with_every_page(site):
  for page in ("index.html", "install/index.html", "quickstart/index.html",
               "reference/python/index.html", "remote_storage/index.html"):
    assert (site / page).is_file(), page


def test_the_config_reference_lists_every_key_the_schema_has(site):
  page = (site / "reference/config/index.html").read_text()
  keys = [k.key.lstrip(".") for k in describe(Config, "")]
  assert len(keys) > 100 and "train.steps" in keys
  missing = [k for k in keys if f"<code>{k.replace('init_from', 'model.init_from')}</code>"
             not in page]
  assert missing == []
  assert "[1, 2147483647]" in page  # train.steps' range


def test_the_command_line_reference_has_every_command(site):
  page = (site / "reference/cli/index.html").read_text()
  for command in ("lmjax train", "lmjax fill-mask", "lmjax convert hf-to-lmjax",
                  "lmjax data prepare", "lmjax plot"):
    assert f"<code>{command}</code>" in page, command


def test_the_install_page_names_every_extra():
  extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  page = (ROOT / "docs/install.md").read_text()
  assert [e for e in extras if f"| `{e}` |" not in page] == []


def test_the_readme_is_one_screen_that_links_the_documentation():
  """The README keeps what a newcomer needs first; the rest lives in docs/ (and figures other
  pages rely on, the performance page among them, are linked from it)."""
  readme = (ROOT / "README.md").read_text()
  links = re.findall(r"\]\(([^)#]+)", readme)
  assert "docs/index.md" in links and "docs/performance.md" in links and "make docs" in readme
  assert [link for link in links if not (ROOT / link).is_file()] == []
  assert len(readme.splitlines()) <= 60, "move long sections into a page under docs/"


def test_the_readme_shows_the_test_command_that_ci_runs():
  ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))]
  assert ci == ["make test"]
  assert re.search(r"^make test\b", (ROOT / "README.md").read_text(), re.MULTILINE)
