"""Works wherever it is cloned: outputs on one filesystem, the temporary folder on another.

Fedora, Arch and many containers mount /tmp as tmpfs; laptops have a separate /home; the documented
cluster keeps its output home on NFS. A hard link or a rename from one folder into another fails there
with EXDEV. These tests put the outputs on a different filesystem from TMPDIR and run the main job, the
smoke sweep and a scoring job as a user would, and check the atomic writers' fallbacks directly.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deepfake_platform.checkpoints import epoch_checkpoints, read_checkpoint
from deepfake_platform.files import copy_atomic, link_or_copy, write_text_atomic
from tests.factories import encoded, photo, tiny_checkpoint
from tests.proctools import user_env

REPO = Path(__file__).resolve().parents[1]


def _device(path: Path) -> int:
    return os.stat(path).st_dev


@pytest.fixture
def split_filesystems(tmp_path):
    """(outputs, temporary folder) on two different filesystems: /dev/shm (tmpfs) and the test's tmp_path,
    or the repository's disk when tmp_path is itself on /dev/shm's filesystem."""
    temp = Path(tempfile.mkdtemp(prefix="xfs-", dir="/tmp"))  # short: Ray's socket paths live under it
    candidates = [Path("/dev/shm"), REPO]
    base = next((c for c in candidates if c.is_dir() and os.access(c, os.W_OK) and _device(c) != _device(temp)), None)
    if base is None:
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip("this machine has no writable filesystem besides /tmp's (needs /dev/shm or the repo elsewhere)")
    outputs = Path(tempfile.mkdtemp(prefix=".xfs-outputs-", dir=base))
    try:
        yield outputs, temp
    finally:
        shutil.rmtree(outputs, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_hard_link_across_filesystems_becomes_an_atomic_copy(split_filesystems):
    outputs, temp = split_filesystems
    source = outputs / "epoch.pth"
    source.write_bytes(os.urandom(1 << 20))
    with pytest.raises(OSError) as raised:  # the premise: the old staging's hard link cannot work here
        os.link(source, temp / "linked")
    assert raised.value.errno == errno.EXDEV
    target = link_or_copy(source, temp / "staging" / "checkpoint.pth")
    assert target.read_bytes() == source.read_bytes() and not target.samefile(source)
    same = link_or_copy(source, outputs / "best.pth")  # same filesystem: a link, no second write
    assert same.samefile(source)
    copied = copy_atomic(source, temp / "copy.pth")
    assert copied.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in temp.iterdir()) == ["copy.pth", "staging"]  # no temporary file left behind


def test_an_interrupted_atomic_write_keeps_the_previous_file(tmp_path):
    path = write_text_atomic(tmp_path / "RESULTS.md", "first\n")
    from deepfake_platform.files import write_atomic

    def fail(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, fail)
    assert path.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # readable by the other users of a shared output home


def _run(command: list[str], cwd: Path, temp: Path, timeout: int) -> subprocess.CompletedProcess:
    # TMPDIR is what a user on such a machine has; Ray's session folder follows it.
    result = subprocess.run(command, cwd=cwd, env=user_env(TMPDIR=str(temp)), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Invalid cross-device link" not in result.stdout + result.stderr
    return result


@pytest.mark.ray
@pytest.mark.long
@pytest.mark.timeout(900)
def test_train_sweep_and_score_with_outputs_on_another_filesystem(split_filesystems, data_root):
    outputs, temp = split_filesystems
    assert _device(outputs) != _device(temp)
    data = outputs / "data"
    shutil.copytree(data_root, data)

    _run([sys.executable, str(REPO / "experiments" / "reproduce_baseline.py"), "--smoke", "--data", str(data),
          "--name", "xfs", "--epochs", "2", "--set", "train.precision=fp32"], outputs, temp, 400)
    epochs = epoch_checkpoints(outputs / "checkpoints" / "xfs")
    assert [p.name[:9] for p in epochs] == ["epoch_000", "epoch_001"]
    assert read_checkpoint(outputs / "artifacts" / "best.pth").detector == "hybrid_tiny"
    assert "## " in (outputs / "runs" / "xfs" / "RESULTS.md").read_text()
    assert not [p for p in (outputs / "checkpoints" / "xfs").iterdir() if p.name.startswith(".")]  # staging gone
    # Ray's own copy of the latest checkpoint, made from the staging folder beside the epoch files.
    assert list((outputs / "ray_results").rglob("checkpoint.pth"))

    _run([sys.executable, str(REPO / "experiments" / "tune_sweep.py"), "--config",
                  str(REPO / "experiments" / "configs" / "sweep_smoke.yaml"), "--output-root", str(outputs),
                  "--data", str(data), "--name", "xfs-sweep", "--set", "tune.num_samples=2",
                  "--set", "search.freeze=[none]"], outputs, temp, 600)
    sweep_report = (outputs / "runs" / "xfs-sweep" / "SWEEP.md").read_text()
    assert sweep_report.count("| finished |") + sweep_report.count("| stopped early (ASHA) |") == 2, sweep_report

    images = outputs / "inbox"
    images.mkdir()
    for i in range(4):
        (images / f"p{i}.png").write_bytes(encoded(photo(i), "PNG"))
    checkpoint = tiny_checkpoint(outputs / "tiny.pth")
    _run([sys.executable, str(REPO / "experiments" / "score.py"), "--checkpoint", str(checkpoint),
          "--input", str(images), "--out", "scores.parquet"], outputs, temp, 300)
    rows = pq.read_table(outputs / "scores.parquet").to_pylist()
    assert sorted(Path(row["path"]).name for row in rows) == [f"p{i}.png" for i in range(4)]
    assert all(row["label"] in ("real", "fake") for row in rows)
    assert json.loads((outputs / "artifacts" / "best.json").read_text())["best"]["epoch"] >= 0
