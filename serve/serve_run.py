"""Ending `serve run CONFIG` from inside its build task, when the model is missing.

`serve run` with a config file (ray/serve/scripts.py in Ray 2.60) builds the app in a Ray task and then
waits in a sleep loop that no failure ends; none of the platform's code runs in that command's own
process, so a build that cannot succeed can only end it from outside: this is the one place that does.
"""

from __future__ import annotations

import os
import signal
import sys


def end_serve_run(message: str) -> None:
    """Inside Serve's build task started by `serve run CONFIG`: print `message` on that command's terminal
    and end it, so a missing model is one sentence and not a start that waits forever.

    The command is the driver of the task's job, found in the job table of this task's own Ray (never
    another Ray on the machine). Anywhere else (tests, `serve deploy`, the builder called in-process,
    a driver that is not `serve run`) this does nothing and the caller's exception speaks.
    """
    try:
        import ray  # ray:

        worker = ray._private.worker.global_worker  # ray:
        if not ray.is_initialized() or worker.mode != ray.WORKER_MODE:  # ray:
            return
        job_id = ray.get_runtime_context().get_job_id()  # ray:
        jobs = worker.gcs_client.get_all_job_info(skip_submission_job_info_field=True,  # ray:
                                                  skip_is_running_tasks_field=True)
        driver = next((job for job in jobs.values() if job.job_id.hex() == job_id), None)
        command = driver.entrypoint.split() if driver is not None else []
        if not (any(part.endswith("serve") for part in command[:2]) and "run" in command):
            return
        with open(f"/proc/{driver.driver_pid}/fd/2", "w") as terminal:  # its stderr, without Ray's prefix
            terminal.write(message + "\n")
        # SIGHUP: no handler of Python or Ray catches it (SIGTERM would print a stack trace), and the local
        # Ray that `serve run` started shares its fate.
        os.kill(driver.driver_pid, signal.SIGHUP)
    except Exception as err:  # best effort: the exception raised by the caller still reports the problem
        print(f"could not end `serve run` early ({err!r})", file=sys.stderr)
