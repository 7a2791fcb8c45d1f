"""Training: a plain-PyTorch epoch loop, run on each Ray Train worker, and the launcher that starts it.

Read top to bottom: `train_one_epoch`, `validate`, `train_loop_per_worker` (the per-worker loop, whose
Ray lines are marked `# ray:`), then `build_trainer` / `run_training` (the launcher). The same loop
serves the main job, every Ray Tune trial and the benchmark.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from deepfake_platform.checkpoints import (
    CheckpointError,
    checkpoint_filename,
    link_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from deepfake_platform.config import REPO_ROOT, ExperimentConfig, config_from_dict
from deepfake_platform.inference import autocast, resolve_precision
from deepfake_platform.metrics import choose_threshold, roc_auc

log = logging.getLogger(__name__)

RAY_CHECKPOINT_FILE = "checkpoint.pth"


@dataclass
class RunPaths:
    """Where one run writes: checkpoints/<run>, runs/<run> (report + TensorBoard), artifacts/."""

    checkpoints: Path
    run_dir: Path
    artifacts: Path
    storage: Path

    @classmethod
    def for_config(cls, config: ExperimentConfig) -> RunPaths:
        """Absolute paths, so Ray workers (whose working directory differs) write where the user looks."""
        out = config.output

        def absolute(path: str) -> Path:
            return Path(path).expanduser().resolve()

        return cls(
            checkpoints=absolute(out.checkpoints_dir) / config.name,
            run_dir=absolute(out.runs_dir) / config.name,
            artifacts=absolute(out.artifacts_dir),
            storage=absolute(out.storage_path),
        )


# ---------------------------------------------------------------------------------------------
# Building blocks (plain PyTorch: unit-testable without Ray)
# ---------------------------------------------------------------------------------------------


def build_detector(config: ExperimentConfig) -> nn.Module:
    """The detector a config names, with its pretrained policy and freezing applied."""
    from models import create_detector

    kwargs = dict(config.model.kwargs)
    kwargs.setdefault("pretrained_policy", config.model.pretrained)
    kwargs.setdefault("freeze", config.model.freeze)
    return create_detector(config.model.name, **kwargs)


def image_size_for(config: ExperimentConfig, model: nn.Module) -> int:
    """The configured input size, or the detector's own default."""
    return config.data.image_size or int(model.default_image_size)


class ShardSampler(torch.utils.data.Sampler):
    """Every index exactly once across ranks (no padding), so validation metrics count each image once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader_workers(config: ExperimentConfig, cpus: float) -> int:
    """DataLoader worker processes: data.loader_workers, or on a GPU when that is 0, the CPUs less one (up to 8)."""
    if config.data.loader_workers or not config.scaling.use_gpu:
        return config.data.loader_workers
    # A GPU step outruns one process decoding JPEGs: keep one CPU for the training process, decode on the rest.
    return int(min(8, max(1, cpus - 1)))


def make_loaders(
    config: ExperimentConfig, data_root: Path, image_size: int, rank: int, world_size: int, *, cpus: float = 1.0
):
    """Train and validation loaders for this rank (distributed sampler for train, exact shards for val)."""
    from deepfake_platform.data import ImageDataset, build_transform, load_split

    train_samples = load_split(data_root, "train")
    val_samples = load_split(data_root, "val")
    train_set = ImageDataset(train_samples, build_transform("train", image_size))
    val_set = ImageDataset(val_samples, build_transform("eval", image_size))
    train_sampler = DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=config.train.seed
    )
    workers = loader_workers(config, cpus)
    common = {
        "batch_size": config.train.batch_size,
        "num_workers": workers,
        # Ray workers are threaded processes: fork would copy their locks (RAY_NOTES.md).
        "multiprocessing_context": "forkserver" if workers > 0 else None,
        "persistent_workers": workers > 0,
        # Page-locked batches copy to the GPU asynchronously (the `non_blocking=True` in the loops).
        "pin_memory": config.scaling.use_gpu,
    }
    # A compiled model recompiles for a short last batch: drop it (a different few images each epoch).
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=config.train.compile, **common)
    val_loader = DataLoader(val_set, sampler=ShardSampler(len(val_set), rank, world_size), **common)
    return train_loader, val_loader, train_sampler


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; the fused kernel (one pass over the weights per step) on CPU and CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=config.train.lr, weight_decay=config.train.weight_decay, fused=fused or None)


def prepare_detector(config: ExperimentConfig, device: torch.device) -> nn.Module:
    """The configured detector on `device`, channels_last when configured, attention tuned for the device."""
    model = build_detector(config).to(device)
    if config.train.channels_last:
        # oneDNN and cuDNN convolutions run fastest on NHWC tensors.
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        # On CPU the flash-attention backward kernel costs ~10% of a ViT-B/16 training step at 197 tokens;
        # timm's plain q @ k -> softmax -> @ v path (bf16 GEMMs) does the same work in a third of the time.
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
    return model


def compile_if_configured(model: nn.Module, config: ExperimentConfig) -> nn.Module:
    """`torch.compile(model)` when train.compile is set (parameters shared with `model`), else `model`."""
    return torch.compile(model) if config.train.compile else model


def _progress(iterable: Iterable, total: int, description: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, unit="batch", file=sys.stdout, mininterval=2.0,
                dynamic_ncols=False, ncols=110)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str,
    *,
    epoch: int,
    max_steps: int = 0,
    on_batch: Callable[[int, float], None] | None = None,
    show_progress: bool = False,
) -> dict[str, float]:
    """One pass over the training data; returns mean loss, image count, throughput and data-wait share."""
    model.train()
    criterion = nn.BCEWithLogitsLoss()
    total_loss, seen, data_wait = 0.0, 0, 0.0
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    bar = _progress(loader, steps, f"epoch {epoch}", show_progress)
    start = tick = time.perf_counter()
    for step, (images, labels) in enumerate(bar):
        if max_steps and step >= max_steps:
            break
        data_wait += time.perf_counter() - tick
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True).float()
        with autocast(device, precision):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_loss = float(loss.detach())
        total_loss += batch_loss * labels.numel()
        seen += labels.numel()
        if on_batch is not None:
            on_batch(step, batch_loss)
        if show_progress:
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f"loss {total_loss / seen:.4f}  {seen / elapsed:.2f} img/s")
        tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_images": seen,
        "train_time_s": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "data_wait_fraction": data_wait / elapsed if elapsed > 0 else 0.0,
    }


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, precision: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Fake probabilities, labels and summed BCE loss over a loader (this rank's share)."""
    model.eval()
    scores, labels_all, loss_sum = [], [], 0.0
    criterion = nn.BCEWithLogitsLoss(reduction="sum")
    for images, labels in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float().cpu()
        loss_sum += float(criterion(logits, labels.float()))
        scores.append(torch.sigmoid(logits).numpy())
        labels_all.append(labels.numpy())
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), 0.0
    return np.concatenate(scores), np.concatenate(labels_all).astype(np.int64), loss_sum


def gather_predictions(scores: np.ndarray, labels: np.ndarray, loss_sum: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Concatenate every rank's share (each image once) so every rank computes the same metrics."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores, labels, loss_sum
    shares: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (scores, labels, loss_sum))
    return (
        np.concatenate([s[0] for s in shares]),
        np.concatenate([s[1] for s in shares]),
        float(sum(s[2] for s in shares)),
    )


def validate(model: nn.Module, loader: DataLoader, device: torch.device, precision: str) -> dict[str, float]:
    """Validation loss, AUC and the decision threshold over every validation image once."""
    scores, labels, loss_sum = gather_predictions(*predict(model, loader, device, precision))
    return {
        "val_loss": loss_sum / max(len(labels), 1),
        "val_auc": roc_auc(labels, scores),
        "val_threshold": choose_threshold(labels, scores),
        "val_images": int(len(labels)),
    }


def checkpoint_payload(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: ExperimentConfig, epoch: int,
    metrics: dict[str, float], history: list[dict[str, float]],
) -> dict[str, Any]:
    """Everything a checkpoint holds: enough to resume exactly or to rebuild the model alone."""
    return {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "epoch": epoch,
        "val_auc": float(metrics["val_auc"]),
        "val_threshold": float(metrics["val_threshold"]),
        "config": config.to_dict(),
        "detector": {"name": config.model.name, "kwargs": dict(model.detector_kwargs)},
        "pretrained_status": dict(getattr(model, "pretrained_status", {})),
        "history": [dict(row) for row in history],
    }


def _auc_key(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def _set_threads(cpus: float) -> None:
    # Ray sets OMP_NUM_THREADS to the worker's CPU count; set torch's too, so each worker uses its share.
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _latest_state(resume_from: str | None, checkpoints_dir: Path, detector: str) -> dict[str, Any] | None:
    """The newest of: Ray's restored checkpoint, an explicit --resume file, and the run's own latest epoch file.

    Without --resume, the run's folder counts too because a worker killed between writing its epoch file and reporting it to
    Ray leaves Ray one epoch behind; and it makes rerunning a killed run under the same name continue it.
    """
    import ray.train  # ray:

    candidates = []
    restored = ray.train.get_checkpoint()  # ray: set after a worker-group restart or a same-name rerun
    if restored is not None:
        with restored.as_directory() as directory:
            candidates.append(load_checkpoint(Path(directory) / RAY_CHECKPOINT_FILE))
    if resume_from:
        candidates.append(load_checkpoint(resume_from))
    else:
        # An explicit --resume file wins over later epochs left in the folder (as in the reference's train.py).
        own = sorted(checkpoints_dir.glob("epoch_*_auc_*.pth"))
        if own:
            candidates.append(load_checkpoint(own[-1]))
    for payload in candidates:
        if payload["detector"]["name"] != detector:
            raise CheckpointError(
                f"the checkpoint to continue from holds a {payload['detector']['name']} detector, not {detector}; "
                f"choose a new --name (the run folder {checkpoints_dir} belongs to another experiment)."
            )
    return max(candidates, key=lambda payload: payload["epoch"]) if candidates else None


# ---------------------------------------------------------------------------------------------
# The per-worker loop (runs inside each Ray Train worker)
# ---------------------------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train `config` on this worker's share, validate on all, checkpoint and report every epoch."""
    import ray.train  # ray:
    import ray.train.torch  # ray:

    config = config_from_dict(loop_config["config"], "loop config")
    paths = RunPaths(**{key: Path(value) for key, value in loop_config["paths"].items()})
    context = ray.train.get_context()  # ray:
    rank, world_size = context.get_world_rank(), context.get_world_size()  # ray:
    _set_threads(loop_config["cpus_per_worker"])
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed + rank)

    device = ray.train.torch.get_device() if config.scaling.use_gpu else torch.device("cpu")  # ray:
    precision = resolve_precision(config.train.precision, device)
    # On the device before the optimizer exists, so a resumed optimizer state lands next to its parameters.
    model = prepare_detector(config, device)
    image_size = image_size_for(config, model)
    optimizer = build_optimizer(model, config)
    history: list[dict[str, float]] = []
    start_epoch = 0
    state = _latest_state(loop_config.get("resume_from"), paths.checkpoints, config.model.name)
    if state is not None:
        model.load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        history = [row for row in state.get("history", []) if row["epoch"] <= state["epoch"]]
        start_epoch = int(state["epoch"]) + 1
        if rank == 0:
            print(f"Resuming after epoch {state['epoch']} (val AUC {state['val_auc']:.4f}).", flush=True)
    train_model = ray.train.torch.prepare_model(model, move_to_device=False)  # ray: DDP when world > 1
    train_model = compile_if_configured(train_model, config)
    train_loader, val_loader, train_sampler = make_loaders(
        config, Path(loop_config["data_root"]), image_size, rank, world_size, cpus=loop_config["cpus_per_worker"]
    )

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(log_dir=str(paths.run_dir / "tensorboard"))
    best_auc = max((_auc_key(row["val_auc"]) for row in history), default=-math.inf)

    for epoch in range(start_epoch, config.train.epochs):
        train_sampler.set_epoch(epoch)
        steps_per_epoch = len(train_loader)

        def log_batch(step: int, loss: float, epoch: int = epoch, steps: int = steps_per_epoch) -> None:
            if writer is not None:
                writer.add_scalar("train/batch_loss", loss, epoch * steps + step)

        epoch_start = time.perf_counter()
        train_stats = train_one_epoch(
            train_model, train_loader, optimizer, device, precision, epoch=epoch,
            max_steps=config.train.max_steps_per_epoch, on_batch=log_batch, show_progress=rank == 0,
        )
        # Validate the unwrapped model: DDP's forward is a collective, and shards differ in length.
        val_stats = validate(model, val_loader, device, precision)
        metrics = {
            "epoch": epoch,
            **train_stats,
            **val_stats,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - epoch_start,
            "world_size": world_size,
        }
        history.append({k: float(v) for k, v in metrics.items()})
        checkpoint = None
        if rank == 0:
            writer.add_scalar("train/epoch_loss", metrics["train_loss"], epoch)
            writer.add_scalar("val/loss", metrics["val_loss"], epoch)
            writer.add_scalar("val/auc", metrics["val_auc"], epoch)
            writer.add_scalar("train/lr", metrics["lr"], epoch)
            writer.add_scalar("train/images_per_s", metrics["images_per_s"], epoch)
            writer.flush()
            payload = checkpoint_payload(model, optimizer, config, epoch, metrics, history)
            epoch_file = save_checkpoint(payload, paths.checkpoints / checkpoint_filename(epoch, metrics["val_auc"]))
            # An attempt killed after writing this epoch's file leaves one with another AUC: one file per epoch.
            for stale in paths.checkpoints.glob(f"epoch_{epoch:03d}_auc_*.pth"):
                if stale != epoch_file:
                    stale.unlink(missing_ok=True)
            if _auc_key(metrics["val_auc"]) > best_auc:
                best_auc = _auc_key(metrics["val_auc"])
                link_checkpoint(epoch_file, paths.checkpoints / "best.pth")
            print(
                f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
                f"val AUC {metrics['val_auc']:.4f}, {metrics['images_per_s']:.2f} img/s -> {epoch_file.name}",
                flush=True,
            )
            staging = Path(tempfile.mkdtemp(prefix="ckpt_"))
            # A hard link: Ray copies the file into its storage without a second full write here.
            os.link(epoch_file, staging / RAY_CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(str(staging))  # ray:
        ray.train.report(metrics, checkpoint=checkpoint)  # ray: a barrier; rank 0 alone passes a checkpoint
        if checkpoint is not None:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
    if writer is not None:
        writer.close()


# ---------------------------------------------------------------------------------------------
# The launcher (driver side)
# ---------------------------------------------------------------------------------------------


def ensure_ray() -> None:
    """Join RAY_ADDRESS (or a cluster started on this machine) when there is one, else start a local Ray."""
    import ray  # ray:

    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # A `ray job submit` driver: the job's working dir already carries the code to every node.
        ray.init()  # ray:
        return
    from ray._private.services import get_ray_address_from_environment  # ray:

    # Ship the project's packages to the workers, so a clone runs on a cluster without installing there.
    packages = [str(REPO_ROOT / name) for name in ("deepfake_platform", "models")]
    runtime_env: dict[str, Any] = {"py_modules": packages}
    options: dict[str, Any] = {}
    address = os.environ.get("RAY_ADDRESS")
    if get_ray_address_from_environment(address, None) in (None, "local"):  # ray: a new local Ray
        # Ray Train's placement-group cleaner asks the State API for "the" Ray on this machine; with several
        # running it gives up, and a stopped run's placement group (an ASHA-stopped trial's) leaks and
        # blocks the next run forever. Point it at this Ray's own dashboard.
        port = _free_port()
        runtime_env["env_vars"] = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
        options = {"include_dashboard": True, "dashboard_port": port}
    ray.init(address=address, runtime_env=runtime_env, **options)  # ray:


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpus_per_worker(config: ExperimentConfig) -> float:
    """The configured CPUs per worker, or the cluster's CPUs split evenly between the workers."""
    import ray  # ray:

    if config.scaling.cpus_per_worker:
        return config.scaling.cpus_per_worker
    total = ray.cluster_resources().get("CPU", 1.0)  # ray:
    return max(1.0, math.floor(total / config.scaling.num_workers))


def build_trainer(
    config: ExperimentConfig, data_root: Path, *, resume_from: str | None = None,
    callbacks: list | None = None, storage_path: str | None = None, run_name: str | None = None,
):
    """A TorchTrainer running `train_loop_per_worker` for `config` (the Ray seam of training)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # ray:
    from ray.train.torch import TorchTrainer  # ray:

    paths = RunPaths.for_config(config)
    cpus = cpus_per_worker(config)
    loop_config = {
        "config": config.to_dict(),
        "paths": {key: str(value) for key, value in vars(paths).items()},
        "data_root": str(Path(data_root).resolve()),
        "resume_from": str(Path(resume_from).resolve()) if resume_from else None,
        "cpus_per_worker": cpus,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(  # ray:
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": cpus},
        ),
        run_config=RunConfig(  # ray:
            name=run_name or config.name,
            storage_path=storage_path or str(paths.storage),
            failure_config=FailureConfig(max_failures=config.scaling.max_failures),
            # Ray keeps the latest checkpoint only: the per-epoch files live in checkpoints/<run>/.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
        ),
    )


@dataclass
class TrainingOutcome:
    """What a finished training run leaves behind."""

    config: ExperimentConfig
    paths: RunPaths
    best_checkpoint: Path
    wall_time_s: float


def run_training(config: ExperimentConfig, data_root: Path, resume_from: str | None = None) -> TrainingOutcome:
    """Run the training through Ray Train and return where the best checkpoint is."""
    if resume_from:
        state = load_checkpoint(resume_from)  # fail before starting Ray when the file is unusable
        if state["epoch"] + 1 >= config.train.epochs:
            raise CheckpointError(
                f"{resume_from} already finished epoch {state['epoch']}; pass --epochs above "
                f"{state['epoch'] + 1} to train further."
            )
    ensure_ray()
    paths = RunPaths.for_config(config)
    start = time.perf_counter()
    # Ray resumes a run name it has seen from that run's latest checkpoint; a --resume file must win over
    # that, so continuing from a chosen file is a Ray run of its own.
    run_name = f"{config.name}-from-{Path(resume_from).stem}-{int(time.time())}" if resume_from else config.name
    # fit() raises once the worker group has failed more than scaling.max_failures times.
    build_trainer(config, data_root, resume_from=resume_from, run_name=run_name).fit()
    best = paths.checkpoints / "best.pth"
    if not best.is_file():
        raise CheckpointError(f"the run finished without writing {best}; see the log above for the cause.")
    return TrainingOutcome(config, paths, best, time.perf_counter() - start)


def default_data_root(data: str | None, config: ExperimentConfig) -> Path:
    """--data, else the config's data.root, else the embedded set data.embedded names (built when missing)."""
    from deepfake_platform.data import EMBEDDED_SETS, ensure_embedded_dataset

    chosen = data or config.data.root
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(
                f"data root {root} does not exist. Point --data at a folder with train/, val/ and test/, each "
                "holding real/ and fake/, or omit it to use the embedded data set."
            )
        return root
    spec = EMBEDDED_SETS[config.data.embedded]
    return ensure_embedded_dataset(spec["path"], counts=spec["counts"], size=spec["size"])


__all__ = [
    "RunPaths",
    "TrainingOutcome",
    "build_optimizer",
    "build_trainer",
    "compile_if_configured",
    "default_data_root",
    "prepare_detector",
    "run_training",
    "train_loop_per_worker",
    "train_one_epoch",
    "validate",
]
