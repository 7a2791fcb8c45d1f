"""Build an ensemble of detectors: fit its combiner on validation, compare it with its members on test.

    python experiments/build_ensemble.py --config experiments/configs/ensemble.yaml
    python experiments/build_ensemble.py --config experiments/configs/ensemble_smoke.yaml --data /tmp/data
    python experiments/build_ensemble.py --config experiments/configs/ensemble.yaml --set combiner=mean
    serve run serve.ensemble.config       # deploy what it wrote

Members are platform checkpoints (paths, or globs keeping a sweep's top_k by validation AUC) and,
when `frequency.enabled`, a frequency-domain detector trained here on the training split in seconds.
Writes runs/<name>/ensemble/ (comparison.md, comparison.csv, roc_test.png, results.json), the ensemble
spec artifacts/<name>.pth (weights_only-loadable) and the Serve config serve.ensemble.config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from deepfake_platform.calibration import choose_operating_points
from deepfake_platform.checkpoints import file_sha256
from deepfake_platform.data import load_split, resolve_data_root
from deepfake_platform.ensemble import EnsembleSpec, MemberSpec, load_member, safe_name, save_ensemble
from deepfake_platform.metrics import choose_threshold, class_scores, roc_auc
from deepfake_platform.orchestration.cli import run_command
from deepfake_platform.orchestration.ensemble_build import (
    check_face_presets,
    compare_on_test,
    fit_combiner,
    load_ensemble_config,
    resolve_members,
    score_members,
    table_rows,
    train_frequency_member,
    write_comparison,
)
from deepfake_platform.reporting import write_json, write_text_atomic
from serve.deploy_config import ensemble_serve_config


def main(args: argparse.Namespace) -> Path:
    config = load_ensemble_config(args.config, args.set)
    data_root = resolve_data_root(args.data, config.data_root, "full", Path.cwd())
    artifacts = Path(config.output.artifacts_dir)
    member_paths = dict(resolve_members(config.members))
    if config.frequency.enabled:
        name = safe_name(config.frequency.name)
        print(f"Training the frequency detector on {data_root}/train ...", flush=True)
        member_paths[name] = train_frequency_member(load_split(data_root, "train"), load_split(data_root, "val"),
                                                    artifacts / f"{config.name}_{name}.pth")
    names = list(member_paths)
    members = {name: load_member(path, config.precision) for name, path in member_paths.items()}
    check_face_presets(members)
    print(f"Scoring {len(members)} members ({', '.join(names)}) on validation and test ...", flush=True)
    val_probabilities, val_labels = val = score_members(members, load_split(data_root, "val"), config.batch_size)
    test = score_members(members, load_split(data_root, "test"), config.batch_size)
    combiner = fit_combiner(config.combiner, names, val_probabilities, val_labels, config.weights)
    val_fused = combiner.apply(val_probabilities)
    spec = EnsembleSpec(
        name=config.name,
        members=[MemberSpec(name, str(path), file_sha256(path)) for name, path in member_paths.items()],
        combiner=combiner,
        threshold=choose_threshold(val_labels, val_fused),
        val_auc=roc_auc(val_labels, val_fused),
        val_scores=class_scores(val_labels, val_fused),
        # On the members' calibrated probabilities, combined: the same scale every door labels at.
        operating_points=choose_operating_points(val_labels, val_fused),
    )
    spec_path = save_ensemble(spec, artifacts / f"{config.name}.pth")
    rows = compare_on_test(names, members, spec, val, test)
    report_dir = Path(config.output.runs_dir).resolve() / config.name / "ensemble"
    report = write_comparison(rows, test[1], report_dir)
    write_json(report_dir / "results.json", {
        "data_root": str(data_root), "spec": str(spec_path), "combiner": combiner.to_dict(),
        "threshold": spec.threshold, "val_auc": spec.val_auc, "members": {n: str(p) for n, p in member_paths.items()},
        "table": table_rows(rows), "test": {row["name"]: row["metrics"] for row in rows}})
    serve_config = Path(config.output.serve_config)
    # Relative to the working directory, like serve.config's artifacts/best.pth: serve run from the same place.
    model = spec_path.relative_to(Path.cwd()) if spec_path.is_relative_to(Path.cwd()) else spec_path
    write_text_atomic(serve_config, f"# Written by experiments/build_ensemble.py; deploy with `serve run {serve_config}`.\n"
                      + yaml.safe_dump(ensemble_serve_config(model, names), sort_keys=False))
    print(Path(report).read_text())
    print(f"Ensemble spec: {spec_path}\nReport: {report}\nServe config: {serve_config} (serve run {serve_config})")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/configs/ensemble.yaml", help="ensemble YAML config")
    parser.add_argument("--data", help="data root (default: the config's data_root, else the embedded set)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set combiner=mean (repeatable)")
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
