"""What every recipe in experiments/ shares: the experiment config it runs, and how a command ends.

`run_command(main)` turns the ways a command can end into what a user should see: a mistake they can
fix (a `UserError`, deepfake_platform/errors.py) is one `error: ...` line (exit status 2), a run that
failed is one line (1), a stop with Ctrl-C stops the Ray this command started and ends with what was kept
and how to continue (130). Ray's own tracebacks never replace the sentence. Anything else is a bug and
ends with its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from deepfake_platform.checkpoints import DetectorCheckpoint, read_checkpoint
from deepfake_platform.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    with_changes,
)
from deepfake_platform.errors import UserError
from deepfake_platform.orchestration.train import RunFailed, RunStopped

T = TypeVar("T")


def load_experiment_config(args: argparse.Namespace, default: Path) -> ExperimentConfig:
    """The config a recipe runs: file (or the resumed checkpoint's own), then --set, then the flags."""
    resume = getattr(args, "resume", None)
    if resume and not args.config:
        # Resuming continues the same experiment: its checkpoint carries the config it was trained with.
        data = read_checkpoint(resume, DetectorCheckpoint).config
        config = config_from_dict(apply_overrides(data, args.set or []), f"{resume}" + (" + --set" if args.set else ""))
    else:
        config = load_config(args.config or default, args.set)
    changes = {
        ("data", "root"): str(Path(args.data).expanduser().resolve()) if getattr(args, "data", None) else None,
        ("scaling", "num_workers"): getattr(args, "num_workers", None) or None,
        ("scaling", "use_gpu"): True if getattr(args, "use_gpu", False) else None,
        ("train", "epochs"): getattr(args, "epochs", None) or None,
    }
    sections: dict[str, dict] = {}
    for (section, key), value in changes.items():
        if value is not None:
            sections.setdefault(section, {})[key] = value
    if sections:  # checked like the file: a flag out of range is a ConfigError naming its key
        config = with_changes(config, **sections)
    if getattr(args, "name", None):
        config.name = args.name
    return config


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """--verbose: Ray's INFO lines on the console again (they always go to Ray's log files)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own INFO lines too (by default they go to Ray's log files only)")


def _stop_ray() -> None:
    import ray  # ray:

    # A second Ctrl-C must not cut the shutdown short and leave Ray's processes behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if ray.is_initialized():
        ray.shutdown()  # ray: the local Ray this command started goes with it


def _last_line(message: str) -> None:
    """Write `message` as the command's last line, below any progress bar of the workers."""
    try:  # Ray draws the workers' bars in this process and redraws them after every print(): clear them
        from ray.experimental import tqdm_ray  # ray:

        tqdm_ray.instance().hide_bars()
    except Exception:  # no bars (or no Ray): nothing to clear
        pass
    sys.stdout.flush()  # what Ray printed for the workers goes first
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _stopped(message: str) -> None:
    _stop_ray()
    _last_line(message)
    # Nothing may print after the sentence: exit hooks would redraw the progress bars of the stopped workers.
    os._exit(130)


def run_command(main: Callable[[], T]) -> T:
    """Run a command's `main` and end it the way a user should see (see the module docstring)."""
    try:
        return main()
    except RunStopped as stop:
        _stopped(str(stop))
    except KeyboardInterrupt:
        _stopped("Stopped.")
    except RunFailed as err:
        _last_line(f"error: {err}")
        sys.exit(1)
    except UserError as err:
        _last_line(f"error: {err}")
        sys.exit(2)
