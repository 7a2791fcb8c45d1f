"""Works wherever it is cloned: outputs on one filesystem, the temporary folder on another.

Fedora, Arch and many containers mount /tmp as tmpfs; laptops have a separate /home; the documented
cluster keeps its output home on NFS. A hard link or a rename from one folder into another fails there
with EXDEV. These tests check the atomic writers' fallbacks directly and run a scoring job as a user would
with the outputs on a different filesystem from TMPDIR; the main job and the smoke sweep run that way in
tests/test_training.py and tests/test_tuning.py (the `split_filesystems` fixture, tests/conftest.py), so that
each of them runs once.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deepfake_platform.files import copy_atomic, link_or_copy, write_text_atomic
from tests.conftest import REPO, device
from tests.factories import encoded, photo, tiny_checkpoint
from tests.proctools import user_env


def test_a_hard_link_across_filesystems_becomes_an_atomic_copy(split_filesystems):
    outputs, temp = split_filesystems
    if device(outputs) == device(temp):
        pytest.skip("this machine has no writable filesystem besides /tmp's (needs /dev/shm or the repo elsewhere)")
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
@pytest.mark.timeout(400)
def test_score_with_outputs_on_another_filesystem(split_filesystems):
    outputs, temp = split_filesystems
    if device(outputs) == device(temp):
        pytest.skip("this machine has no writable filesystem besides /tmp's (needs /dev/shm or the repo elsewhere)")
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
