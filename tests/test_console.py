"""What Ray forwards from its processes to a command's console: the job's lines, not Ray's internals."""

from __future__ import annotations

from deepfake_platform.orchestration.cluster import console_lines

CPP_LINE = ("[2026-12-05 08:33:34,811 E 9612 9700] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
            "and ID: 'c6ad' has constructor arguments in the object store and max_restarts > 0.")


def test_the_jobs_own_lines_pass_and_ray_internals_do_not():
    worker = {"actor_name": "RayTrainWorker", "pid": 9886, "is_err": False,
              "lines": ["epoch 0: train loss 0.7145, val AUC 0.3600", CPP_LINE, "epoch 1: train loss 0.7"]}
    assert console_lines(worker) == ["epoch 0: train loss 0.7145, val AUC 0.3600", "epoch 1: train loss 0.7"]
    controller = {"actor_name": "TrainController", "pid": 9612, "is_err": True,
                  "lines": ["Failed to send resource request for train-e93d.", "Traceback (most recent call last):"]}
    assert console_lines(controller) == []
    task = {"task_name": "prepare", "pid": 1, "is_err": True, "lines": ["UserWarning: RANDOM initialisation"]}
    assert console_lines(task) == ["UserWarning: RANDOM initialisation"]
