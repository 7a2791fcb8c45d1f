"""The README's job commands, run as written in a fresh shell with Ray's defaults (token authentication on).

The block under "As a Ray job" in README.md is read from the README and run by bash in the repo, with
the venv on PATH (as after `source .venv/bin/activate`), a HOME of its own (so `~/.ray/auth_token` and
`~/deepfake-platform` are this test's) and a TMPDIR of its own (so `ray start --head` keeps its files
apart from any other Ray on the machine). Its last line, `ray stop`, stops every Ray of the user on the
machine; the test stops the Ray it started by process id instead.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.proctools import processes_mentioning, stop_processes

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
# `ray start --head`'s default ports: the block uses them, so nothing else may hold them.
DEFAULT_PORTS = (6379, 8265, 52365)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long]


def readme_block(marker: str) -> list[str]:
    """The command lines of the fenced bash block after `marker` in README.md, continuations joined."""
    text = (REPO / "README.md").read_text()
    block = text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture
def fresh_shell(tmp_path):
    """A user's fresh shell: the venv on PATH, no RAY_* variables, a HOME and a TMPDIR of its own."""
    busy = [port for port in DEFAULT_PORTS if not port_free(port)]
    assert not busy, f"ports {busy} are in use: stop the other Ray on this machine first"
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "DEEPFAKE_"))}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(temp), PATH=VENV_BIN + os.pathsep + env["PATH"])
    (tmp_path / "home").mkdir()
    try:
        yield env
    finally:
        stop_processes(processes_mentioning(str(temp)))


@pytest.mark.timeout(600)
def test_the_readme_job_block_runs_as_written_with_token_authentication(fresh_shell):
    lines = readme_block("<!-- tested: tests/test_jobs.py runs this block as written -->")
    assert lines[0] == "export RAY_AUTH_MODE=token" and lines[-1] == "ray stop"
    assert any(line.startswith("ray start --head") for line in lines)
    script = "set -euo pipefail\n" + "\n".join(lines[:-1])  # `ray stop`: see the module docstring
    result = subprocess.run(["bash", "-c", script], cwd=REPO, env=fresh_shell, capture_output=True, text=True,
                            timeout=540)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "succeeded" in output
    home = Path(fresh_shell["HOME"])
    assert (home / ".ray" / "auth_token").is_file()
    # The job ran in a temporary copy of the repo: its outputs are under ~/deepfake-platform, none in the repo.
    (report,) = (home / "deepfake-platform" / "runs").glob("sweep_smoke-*/SWEEP.md")
    assert "## Best trial" in report.read_text()
    assert (home / "deepfake-platform" / "artifacts" / "best.pth").is_file()
    assert not list((REPO / "runs").glob("sweep_smoke-*")) if (REPO / "runs").is_dir() else True

    # A shell that forgot the first line: Ray's own error names the variable to set.
    forgot = subprocess.run(["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--", "python", "-c", "0"],
                            cwd=REPO, env=fresh_shell, capture_output=True, text=True, timeout=120)
    assert forgot.returncode != 0 and "Missing authentication token" in forgot.stderr + forgot.stdout
    assert "RAY_AUTH_MODE" in forgot.stderr + forgot.stdout
    # The platform's own commands send the token this machine holds, as Ray does for `ray.init()`; from a
    # machine without it they say what to copy and what to set, in one line.
    elsewhere = Path(fresh_shell["HOME"]).parent / "other-home"
    elsewhere.mkdir()
    joining = subprocess.run(
        [sys.executable, "experiments/reproduce_baseline.py", "--smoke"], cwd=REPO, capture_output=True, text=True,
        env={**fresh_shell, "HOME": str(elsewhere), "RAY_ADDRESS": "127.0.0.1:6379"}, timeout=180)
    assert joining.returncode == 2, joining.stdout[-2000:] + joining.stderr[-2000:]
    assert "export RAY_AUTH_MODE=token" in joining.stderr and "Traceback" not in joining.stderr
    assert re.search(r"^error: .*~/.ray/auth_token", joining.stderr, re.MULTILINE)
