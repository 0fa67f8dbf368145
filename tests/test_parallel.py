"""The shared job runner (:mod:`nnunet_ccesemi.parallel`): order, per-job callback, errors and dead workers,
in this process and in spawned worker processes. A few seconds (each pool spawns two interpreters)."""
from __future__ import annotations

import os
import signal

import pytest

from nnunet_ccesemi.parallel import WorkerDiedError, run_jobs


# module level, so that spawned workers can import them
def square(job: int) -> int:
    if job < 0:
        raise ValueError(f"job {job} is negative")
    return job * job


def killed_on_three(job: int) -> int:
    if job == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
    return job


@pytest.mark.parametrize("num_processes", [1, 2])
def test_results_in_job_order_and_each_job_reported_once(num_processes):
    done = []
    jobs = [5, 1, 4, 2, 3]
    assert run_jobs(square, jobs, num_processes=num_processes, description="squares",
                    on_done=done.append) == [25, 1, 16, 4, 9]
    assert sorted(done) == sorted(jobs)


def test_serial_path_runs_in_order_in_this_process():
    seen = []

    def record(job):  # a closure: could not be sent to a worker process
        seen.append((job, os.getpid()))
        return job

    assert run_jobs(record, [3, 1, 2], num_processes=1) == [3, 1, 2]
    assert seen == [(3, os.getpid()), (1, os.getpid()), (2, os.getpid())]
    assert run_jobs(record, [7], num_processes=4) == [7]  # one job: no process started
    assert run_jobs(square, [], num_processes=2) == []


@pytest.mark.parametrize("num_processes", [1, 2])
def test_a_job_error_is_raised_here(num_processes):
    with pytest.raises(ValueError, match="job -1 is negative"):
        run_jobs(square, [2, -1, 3], num_processes=num_processes)


def test_a_dead_worker_is_noticed():
    done = []
    with pytest.raises(WorkerDiedError, match=r"a worker process died \(converting\).*-np, 2 now"):
        run_jobs(killed_on_three, [1, 2, 3, 4], num_processes=2, description="converting", on_done=done.append)
    assert 3 not in done
