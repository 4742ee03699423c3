"""The dependencies' versions: ranges in pyproject.toml (cxr installs beside other packages),
exact pins in constraints.txt and constraints-gpu.txt (what the README's setup, CI and the
images install, and the tests ran with)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def constraint_pins(file: str = "constraints.txt") -> dict[str, str]:
    """Package name -> version of a constraints file, whose every line is one exact pin."""
    pins: dict[str, str] = {}
    for line in (ROOT / file).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{file}: {line} is not an exact pin"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{file} pins {name} twice"
        pins[name] = specifier.version
    return pins


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's."""
    extras = [text for texts in PROJECT["optional-dependencies"].values() for text in texts]
    return [Requirement(text) for text in PROJECT["dependencies"] + extras]


def pinned_version(name: str) -> str:
    """The version constraints.txt pins for a dependency of pyproject.toml, which every range
    pyproject.toml gives it (its dependencies', its extras') admits."""
    name = canonicalize_name(name)
    ranges = [r for r in project_requirements() if canonicalize_name(r.name) == name]
    assert ranges, f"pyproject.toml does not depend on {name}"
    version = constraint_pins().get(name)
    assert version, f"constraints.txt does not pin {name}"
    for requirement in ranges:
        assert requirement.specifier.contains(version), (
            f"pyproject.toml's {requirement} does not admit constraints.txt's {name}=={version}")
    return version
