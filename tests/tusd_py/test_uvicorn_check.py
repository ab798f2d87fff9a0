"""tusd_py/ops/uvicorn_check.py: the uvicorn range tusd-py was tested with."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tusd_py.ops import uvicorn_check
from tusd_py.ops.uvicorn_check import TESTED_UVICORN, check_uvicorn

ROOT = Path(__file__).resolve().parents[2]


def _declared_uvicorn() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [dep for dep in project["dependencies"] if re.match(r"uvicorn\b", dep)]
    assert len(found) == 1, found
    return str(found[0])


def test_the_tested_range_is_the_one_pyproject_declares() -> None:
    assert _declared_uvicorn().replace(" ", "") == f"uvicorn[standard]{TESTED_UVICORN}"


def test_the_locked_uvicorn_is_inside_the_tested_range() -> None:
    for name in ("runtime.txt", "test.txt"):
        pins = re.findall(r"^uvicorn==(\S+)", (ROOT / "requirements" / name).read_text(), re.M)
        assert len(pins) == 1, (name, pins)
        low, high = uvicorn_check.tested_range()
        assert low <= uvicorn_check._release(pins[0]) < high, (name, pins[0], TESTED_UVICORN)


def test_the_installed_uvicorn_passes() -> None:
    # scripts/test installs from the lock, whose uvicorn is inside the range.
    assert uvicorn_check.installed_uvicorn() == metadata.version("uvicorn")
    assert check_uvicorn() is None


def test_tested_range_parses_the_constant() -> None:
    assert uvicorn_check.tested_range(">=0.36,<0.55") == ((0, 36), (0, 55))
    assert uvicorn_check.tested_range(" >= 1.2.0 , < 2 ") == ((1, 2), (2,))
    for bad in (">=0.36", "<0.55", ">=0.36,<0.55,<0.60", "~=0.36", ">=0.36,>=0.40", "==0.54"):
        with pytest.raises(ValueError):
            uvicorn_check.tested_range(bad)


@pytest.mark.parametrize("version", ["0.36", "0.36.0", "0.40.2", "0.54.0", "0.54.9.post1"])
def test_versions_inside_the_range_pass(
    monkeypatch: pytest.MonkeyPatch, version: str,
) -> None:
    monkeypatch.setattr(uvicorn_check, "TESTED_UVICORN", ">=0.36,<0.55")
    monkeypatch.setattr(uvicorn_check, "installed_uvicorn", lambda: version)
    assert check_uvicorn() is None


@pytest.mark.parametrize("version", ["0.35.9", "0.55.0", "0.55.0rc1", "0.60.1", "1.0.0"])
def test_versions_outside_the_range_are_one_line_problems(
    monkeypatch: pytest.MonkeyPatch, version: str,
) -> None:
    monkeypatch.setattr(uvicorn_check, "TESTED_UVICORN", ">=0.36,<0.55")
    monkeypatch.setattr(uvicorn_check, "installed_uvicorn", lambda: version)
    problem = check_uvicorn()
    assert problem is not None
    assert "\n" not in problem
    assert f"uvicorn {version} " in problem
    assert ">=0.36,<0.55" in problem


def test_a_missing_or_unreadable_uvicorn_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn_check, "installed_uvicorn", lambda: None)
    problem = check_uvicorn()
    assert problem is not None and "not installed" in problem and "\n" not in problem
    monkeypatch.setattr(uvicorn_check, "installed_uvicorn", lambda: "unknown")
    problem = check_uvicorn()
    assert problem is not None and "uvicorn unknown" in problem


def test_the_version_lookup_reads_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "version", lambda name: {"uvicorn": "0.99.0"}[name])
    assert uvicorn_check.installed_uvicorn() == "0.99.0"
    assert check_uvicorn() is not None

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert uvicorn_check.installed_uvicorn() is None
