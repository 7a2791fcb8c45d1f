"""`make test`'s set-up: what pip cannot install is installed, or one sentence says what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "test_prerequisites.sh"
BASH = shutil.which("bash") or "/bin/bash"


def run(browser: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPT)], env={"PATH": path, "DEEPFAKE_CHROMIUM": browser},
                          capture_output=True, text=True, timeout=60)


def test_a_present_browser_is_enough(tmp_path):
    result = run(BASH, str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_without_a_browser_or_a_way_to_install_one_it_says_what_to_install(tmp_path):
    # No apt-get on PATH: a machine where the script cannot install anything itself.
    missing = tmp_path / "chromium"
    result = run(str(missing), str(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"make test needs Chromium at {missing} for the web page's test: install it")
    assert "apt-get install chromium" in lines[0] and "DEEPFAKE_CHROMIUM" in lines[0]


def test_make_test_runs_the_check_before_anything_else():
    # As a user's shell runs it: not as a sub-make of `make test` (whose MAKEFLAGS and MAKELEVEL add lines).
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAKE") and key != "MFLAGS"}
    plan = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60).stdout
    commands = [line for line in plan.splitlines() if line.strip()]
    assert commands and "test_prerequisites.sh" in commands[0], plan
    assert any("pytest" in line for line in commands[1:]), plan
