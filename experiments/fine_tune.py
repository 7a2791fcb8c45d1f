"""Fine-tune the served detector on production feedback and promote it only when it is better.

    python experiments/fine_tune.py --from artifacts/best.pth --feedback feedback/
    python experiments/fine_tune.py --from artifacts/best.pth --feedback feedback/ --epochs 3 --lr 1e-5 --margin 0.005
    python experiments/fine_tune.py --from artifacts/best.pth --feedback feedback/ --promote   # champion at once
    python experiments/fine_tune.py --from artifacts/best.pth --feedback feedback/ --no-promote   # judge only

The feedback folder is what the server's POST /feedback (and the web page's "this is wrong" button) wrote
under args.feedback_dir. A share of it (--held-back, split by image content, so always the same way) is
kept aside to judge; the rest, cropped with the checkpoint's face preset and repeated so that it counts
beside the original training data, joins that data for a few epochs of the same Ray Train loop, starting
from the checkpoint's weights. Before and after are measured on the original validation and test splits
and on the held-back feedback, answered the way the server answers. The new model is kept only when it
answers more held-back feedback right (or as many with a lower log loss) and its validation AUC is at most
--margin below the original's. Such a model is registered as a new version of the detector (tagged with the version it was
fine-tuned from), the challenger: the server shadows it and `python experiments/models.py promote V` makes it
answer. `--promote` makes it the champion (artifacts/best.pth, the old one kept as
artifacts/previous_best.pth) at once, as does the first version ever. runs/<run>/FINE_TUNE.md says which and
why; MLflow holds the run.
"""

from __future__ import annotations

import argparse

from deepfake_platform.orchestration.cli import add_verbose_flag, run_command
from deepfake_platform.orchestration.fine_tune import fine_tune


def main(args: argparse.Namespace) -> dict:
    result = fine_tune(checkpoint=args.checkpoint, feedback_dir=args.feedback, data=args.data, epochs=args.epochs,
                       lr=args.lr, margin=args.margin, min_robust_auc=args.min_robust_auc, held_back=args.held_back, repeat=args.repeat, name=args.name,
                       promote=not args.no_promote, champion=args.promote, overrides=args.set,
                       verbose=args.verbose)
    print(result["reason"])
    print(f"Report: {result['report']}")
    return result


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="checkpoint", default="artifacts/best.pth",
                        help="the detector checkpoint to fine-tune (default: artifacts/best.pth)")
    parser.add_argument("--feedback", required=True, metavar="DIR", help="the server's feedback folder")
    parser.add_argument("--data", help="the original data root (default: the one the checkpoint was trained on)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of fine-tuning (default: 2)")
    parser.add_argument("--lr", type=float, help="learning rate (default: a tenth of the checkpoint's own)")
    parser.add_argument("--margin", type=float, default=0.01,
                        help="validation AUC the new model may lose and still be promoted (default: 0.01)")
    parser.add_argument("--min-robust-auc", type=float, metavar="AUC",
                        help="also require the new model's worst test AUC under perturbations (JPEG, resizing, blur, "
                             "noise, a social chain: evaluate.py --robustness) to be at least this")
    parser.add_argument("--held-back", type=float, default=0.3,
                        help="share of the feedback kept aside to judge the new model (default: 0.3)")
    parser.add_argument("--repeat", type=int,
                        help="copies of each feedback image per epoch (default: enough for about a quarter of "
                             "an epoch, at most 20)")
    parser.add_argument("--name", help="run name (default: finetune-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the checkpoint's config, e.g. --set train.batch_size=4")
    parser.add_argument("--promote", action="store_true",
                        help="a better model becomes the champion at once (default: the challenger)")
    parser.add_argument("--no-promote", action="store_true",
                        help="judge only; never register the model nor replace artifacts/best.pth")
    add_verbose_flag(parser)
    return parser


if __name__ == "__main__":
    run_command(lambda: main(get_args_parser().parse_args()))
