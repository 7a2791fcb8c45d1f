"""Manage the registered detector's versions: which one answers (champion), which one is on trial (challenger).

    python experiments/models.py list                                  # versions, roles, AUCs, runs
    python experiments/models.py show 4                                # one version: tags, source run, file
    python experiments/models.py challenge 4                           # on trial; the Serve config says how
    python experiments/models.py challenge 4 --mode canary --fraction 0.1
    python experiments/models.py promote 4                             # version 4 answers
    python experiments/models.py promote 4 --min-shadowed 500 --min-corrections 20   # only on enough evidence
    python experiments/models.py rollback                              # the previous champion answers again

Versions are registered by training (`reproduce_baseline.py`: the champion), sweeps and fine-tunes (the
challenger unless they were run with --promote), in the MLflow store of the output home
(`mlruns/mlflow.db`, or $MLFLOW_TRACKING_URI). Each change writes `artifacts/serving.json`, which a running
server reads within seconds, and `artifacts/best.pth` stays the champion's file. The promotion gate reads what
the server saw while it shadowed the challenger: its prediction log (--log) and the users' corrections
(--feedback).

The code of `python experiments/models.py`, kept out of the recipe: a file named `experiments/models.py` is also
what the recipes beside it find when they import the project's `models` package, so the recipe stays a shim.
"""


from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from deepfake_platform.errors import MissingInput
from deepfake_platform.feedback import read_feedback
from deepfake_platform.monitoring import read_log
from deepfake_platform.outputs import output_home
from deepfake_platform.promotion_gate import gate_refusal, shadow_evidence
from deepfake_platform.registry import CHALLENGER, REGISTERED_MODEL, Registry, RegistryError


def main(args: argparse.Namespace) -> None:
    home = output_home(args.home)
    registry = Registry(home, Path(args.artifacts).expanduser() if args.artifacts else None, verbose=args.verbose)
    if args.command != "list" and args.command != "show" and not registry.state_file.is_file() \
            and not (registry.artifacts / "models").is_dir():
        raise RegistryError(f"no model is registered under {home} yet ({registry.state_file} is missing); train one "
                            "with `python experiments/reproduce_baseline.py`, or pass --home.")
    for line in registry.reconcile():
        print(line)
    if args.command == "list":
        list_versions(registry)
    elif args.command == "show":
        show_version(registry, args.version)
    elif args.command == "promote":
        if args.min_shadowed or args.min_corrections:
            check_gate(args, home, registry)
        state = registry.promote(args.version)
        print(f"Version {args.version} is the champion (history {state['history']}); "
              f"{registry.artifacts / 'best.pth'} is its file.")
    elif args.command == "challenge":
        state = registry.challenge(args.version, mode=args.mode, fraction=args.fraction)
        how = state["challenger"]["mode"] or "as the Serve config says"
        share = f" on {state['challenger']['fraction']:.0%} of requests" if state["challenger"]["fraction"] else ""
        print(f"Version {args.version} is the challenger ({how}{share}).")
    elif args.command == "rollback":
        state = registry.rollback()
        print(f"Rolled back: version {state['champion']['version']} is the champion again.")
    if args.command in ("promote", "challenge", "rollback"):
        print(f"Written {registry.state_file}; a running server switches within seconds.")


def check_gate(args: argparse.Namespace, home: Path, registry: Registry) -> None:
    """Print what the shadow saw for the version and refuse the promotion below the minimums."""
    log = Path(args.log or home / "logs" / "predictions")
    if not log.is_dir():
        raise MissingInput(f"{log} does not exist, so there is no shadow evidence; pass --log with the server's "
                           "prediction log folder.")
    feedback = Path(args.feedback or home / "feedback")
    corrections = read_feedback(feedback) if (feedback / "labels.jsonl").is_file() else []
    evidence = shadow_evidence(read_log(log), corrections, args.version)
    print("\n".join(evidence.lines()))
    refusal = gate_refusal(evidence, min_shadowed=args.min_shadowed, min_corrections=args.min_corrections)
    if refusal:
        raise RegistryError(f"not promoted: {refusal}")


def list_versions(registry: Registry) -> None:
    """One line per version, newest first, then who answers."""
    state = registry.state()
    rows = registry.versions()
    if not rows:
        print(f"No version of {REGISTERED_MODEL} is registered in {registry.tracking.uri} yet; train one with "
              "`python experiments/reproduce_baseline.py`.")
        return
    print(f"{'version':>7}  {'role':<10}  {'val AUC':>7}  {'test AUC':>8}  {'kind':<9}  {'created':<16}  run")
    for row in rows:
        tags = row["tags"]
        role = row["role"] or ("withdrawn" if "withdrawn" in tags else "")
        print(f"{row['version']:>7}  {role:<10}  {_number(tags.get('val_auc')):>7}  {_number(tags.get('test_auc')):>8}"
              f"  {tags.get('kind', ''):<9}  {_time(row['created']):<16}  {tags.get('run', '')}")
    challenger = state.get(CHALLENGER)
    if challenger:
        print(f"Challenger version {challenger['version']}: mode {challenger.get('mode') or 'from the Serve config'}"
              + (f", fraction {challenger['fraction']}" if challenger.get("fraction") else "") + ".")
    if state.get("withdrawn"):
        withdrawn = state["withdrawn"]
        print(f"Last withdrawn by the server: version {withdrawn['version']} at {withdrawn['time']}: "
              f"{withdrawn['reason']}")
    print(f"Champion history: {state.get('history') or []}.")


def show_version(registry: Registry, version: int) -> None:
    """Everything known about one version."""
    row = registry.describe(version)
    print(f"{REGISTERED_MODEL} version {row['version']}: {row['role'] or 'no role'}")
    print(f"  created      {_time(row['created'])}")
    print(f"  source run   {row['run_id']}  ({row['source']})")
    print(f"  file         {row['file'] or 'not in this artifacts folder'}")
    for key, value in sorted(row["tags"].items()):
        print(f"  {key:<12} {value}")


def _number(value: str | None) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "-"


def _time(milliseconds: int | None) -> str:
    if not milliseconds:
        return "-"
    return dt.datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments/models.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="output home (default: $DEEPFAKE_HOME, else the current directory)")
    parser.add_argument("--artifacts", help="artifacts folder the server reads (default: <home>/artifacts)")
    parser.add_argument("--verbose", action="store_true", help="show MLflow's own log lines")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every version, its role and metrics")
    show = commands.add_parser("show", help="one version")
    show.add_argument("version", type=int)
    promote = commands.add_parser("promote", help="make a version the champion (it answers)")
    promote.add_argument("version", type=int)
    promote.add_argument("--min-shadowed", type=int, default=0,
                         help="refuse unless the server shadowed at least this many requests with it")
    promote.add_argument("--min-corrections", type=int, default=0,
                         help="refuse unless users corrected at least this many of its shadowed requests")
    promote.add_argument("--log", help="the server's prediction log folder (default: <home>/logs/predictions)")
    promote.add_argument("--feedback", help="the server's feedback folder (default: <home>/feedback)")
    challenge = commands.add_parser("challenge", help="put a version on trial (shadow or canary)")
    challenge.add_argument("version", type=int)
    challenge.add_argument("--mode", choices=("shadow", "canary"), help="default: the Serve config's")
    challenge.add_argument("--fraction", type=float, help="canary: share of requests it answers")
    commands.add_parser("rollback", help="the previous champion answers again")
    return parser


def run(argv: list[str] | None = None) -> None:
    """The command, as `python experiments/models.py` runs it."""
    from deepfake_platform.orchestration.cli import run_command

    run_command(lambda: main(get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)))
