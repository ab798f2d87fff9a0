"""Real-browser tests: Debian's Chromium driven by playwright-core (tests/js/node_modules).

Nothing here is ever skipped: a missing `node`, npm package or browser fails every test, with
the command that fixes it.  Install with:  npm ci --prefix tests/js  (and apt-get install
chromium).  CHROMIUM_PATH overrides /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).resolve().parents[1] / "js"
BROWSER_JS = JS_DIR / "browser"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
NPM_PACKAGES = ("playwright-core", "tus-js-client", "uppy")


def _problem() -> str | None:
    if shutil.which("node") is None:
        return "`node` (Node.js >= 20) is not on PATH"
    for package in NPM_PACKAGES:
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            return (f"npm package {package} is missing from tests/js/node_modules; "
                    "run `npm ci --prefix tests/js`")
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: `apt-get install chromium` (or set CHROMIUM_PATH)"
    return None


@pytest.fixture(autouse=True, scope="package")
def _require_browser_env() -> None:
    """Fail (never skip) every browser test when Node, the npm packages or Chromium are missing."""
    problem = _problem()
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="package")
def artifacts() -> Path:
    """tests/browser/artifacts/: screenshots and logs of the last run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def run_node(script: str, scenario: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Run tests/js/browser/<script> with the scenario; return its JSON result (ok is True).

    The script has its own deadline (scenario["timeoutMs"]); `timeout` is the hard stop here.
    """
    scenario = {"timeoutMs": int((timeout - 10) * 1000), **scenario}
    try:
        done = subprocess.run(
            ["node", str(BROWSER_JS / script), json.dumps(scenario)],
            cwd=JS_DIR, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(
            exc.stderr or "")
        pytest.fail(f"{script} ran over {timeout:g} s; stderr:\n{stderr}")
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"{script} exited {done.returncode} without a JSON result\n"
                    f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    if done.returncode != 0 or not result.get("ok"):
        pytest.fail(f"{script} failed (exit {done.returncode}): {result.get('error')}\n"
                    f"stderr:\n{done.stderr}")
    assert not result.get("pageErrors"), result["pageErrors"]
    return result
