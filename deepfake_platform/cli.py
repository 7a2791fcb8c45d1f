"""Command-line plumbing shared by the recipes in experiments/: config assembly and friendly errors."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from deepfake_platform.checkpoints import CheckpointError, load_checkpoint
from deepfake_platform.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)


def load_experiment_config(args: argparse.Namespace, default: Path) -> ExperimentConfig:
    """The config a recipe runs: file (or the resumed checkpoint's own), then --set, then the flags."""
    resume = getattr(args, "resume", None)
    if resume and not args.config:
        # Resuming continues the same experiment: its checkpoint carries the config it was trained with.
        config = config_from_dict(load_checkpoint(resume)["config"], str(resume))
        if args.set:
            config = config_from_dict(apply_overrides(config.to_dict(), args.set), f"{resume} + --set")
    else:
        config = load_config(args.config or default, args.set)
    if getattr(args, "data", None):
        config.data.root = str(Path(args.data).expanduser().resolve())
    if getattr(args, "num_workers", None):
        config.scaling.num_workers = args.num_workers
    if getattr(args, "use_gpu", False):
        config.scaling.use_gpu = True
    if getattr(args, "epochs", None):
        config.train.epochs = args.epochs
    if getattr(args, "name", None):
        config.name = args.name
    return config.validate()


# Errors a user can cause and fix: shown as a sentence, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, FileNotFoundError, ValueError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one `error: ...` line and exit status 2."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
