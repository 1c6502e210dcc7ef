"""constraints.txt, the versions `make test` installs, agrees with pyproject.toml's ranges.

A pin outside a declared range would make pip's resolution fail on a fresh machine (or, for a
range raised past its pin, leave the pin stale); this is caught here, in milliseconds, rather
than by the next fresh install.
"""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parent.parent
# What the pins must cover at least: the stack whose versions have broken each other before.
MUST_PIN = ["jax", "jaxlib", "flax", "orbax-checkpoint", "grain", "optax", "numpy", "safetensors",
            "transformers", "torch", "datasets"]


def pins() -> dict[str, Version]:
  found = {}
  for line in (ROOT / "constraints.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      requirement = Requirement(line)
      (specifier,) = requirement.specifier  # one exact pin a line
      assert specifier.operator == "==", line
      found[canonicalize_name(requirement.name)] = Version(specifier.version)
  return found


def declared() -> dict[str, list[Requirement]]:
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  requirements = project["dependencies"] + [
      r for extra in project["optional-dependencies"].values() for r in extra]
  by_name: dict[str, list[Requirement]] = {}
  for line in requirements:
    requirement = Requirement(line)
    by_name.setdefault(canonicalize_name(requirement.name), []).append(requirement)
  return by_name


def test_every_pin_lies_inside_the_range_pyproject_declares():
  ranges = declared()
  for name, version in pins().items():
    assert name in ranges, f"constraints.txt pins {name}, which pyproject.toml never asks for"
    for requirement in ranges[name]:
      assert requirement.specifier.contains(version), (
          f"constraints.txt pins {name}=={version}, outside pyproject.toml's "
          f"{requirement}: move the pin or the bound")


def test_the_stack_is_pinned_and_the_test_command_installs_with_the_pins():
  pinned = pins()
  assert [n for n in MUST_PIN if n not in pinned] == []
  assert pinned["torch"] == Version("2.13.0")  # the CPU build's version (docs/install.md)
  installs = re.findall(r"pip install .*", (ROOT / "Makefile").read_text())
  lmjax_installs = [line for line in installs if "-e " in line]
  assert lmjax_installs and all("-c constraints.txt" in line for line in lmjax_installs)
