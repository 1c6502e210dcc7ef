"""What a plain (non-editable) install holds: the shipped configs, found by name."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import TINY
from tests.processes import cpu_env

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The package as `pip install .` lays it out: the wheel pip builds, unpacked."""
  root = tmp_path_factory.mktemp("wheel")
  source = root / "source"  # a copy: setuptools builds in the source tree (build/, egg-info)
  for name in ("lmjax", "configs"):
    shutil.copytree(REPO / name, source / name, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copyfile(REPO / name, source / name)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--quiet", "-w", str(root / "dist"), str(source)], check=True, timeout=300,
                 cwd=root)
  (wheel,) = (root / "dist").glob("lmjax-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(root / "site")
  return root / "site"


def test_the_wheel_ships_every_config_of_the_repository(installed):
  shipped = sorted(p.name for p in (installed / "lmjax" / "configs").iterdir())
  assert shipped == sorted(p.name for p in (REPO / "configs").iterdir())
  assert not (installed / "lmjax" / "configs").is_symlink()


def test_an_installed_lmjax_trains_a_shipped_config_by_name_outside_a_checkout(installed,
                                                                                tmp_path):
  env = cpu_env(1, PYTHONPATH=str(installed))
  where = subprocess.run([sys.executable, "-c", "import lmjax; print(lmjax.__file__)"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert where.stdout.strip().startswith(str(installed)), where  # not the checkout's
  done = subprocess.run([sys.executable, "-m", "lmjax", "train", "tiny-gpt", "--run-dir",
                         str(tmp_path / "run"), "--set", *TINY, "train.steps=2"],
                        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
  assert not os.path.exists(tmp_path / "configs")
