"""One way to run independent jobs in worker processes: the converters' cases, the unlabelled
preprocessing and the evaluator's case pairs.

Workers are spawned, not forked, as nnU-Net does: a forked child inherits the parent's torch and
blosc2 thread pools in a state they do not survive. A worker that dies (the kernel's out-of-memory
killer, a ``kill -9``) is noticed through :class:`concurrent.futures.ProcessPoolExecutor`, which fails
the pending jobs with ``BrokenProcessPool`` instead of waiting for them forever as
``multiprocessing.Pool`` does; no private attribute is read.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Optional, Sequence, TypeVar

from tqdm import tqdm

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")


class WorkerDiedError(RuntimeError):
    """A worker process ended without returning a result (killed, or out of memory)."""


def run_jobs(worker: Callable[[JobT], ResultT], jobs: Sequence[JobT], *, num_processes: int = 1,
             description: Optional[str] = None,
             on_done: Optional[Callable[[JobT], None]] = None) -> list[ResultT]:
    """``[worker(job) for job in jobs]``, in worker processes when ``num_processes > 1``.

    Results come back in the order of ``jobs``; ``on_done(job)`` runs in this process as each job
    finishes (in completion order), e.g. to record progress that survives an interruption. With
    ``num_processes <= 1`` or a single job everything runs here, in order, with no process started.

    Args:
        worker: a module-level function (or a ``functools.partial`` of one) so that spawned
            processes can import it; the jobs and results must be picklable.
        jobs: one argument of ``worker`` each.
        num_processes: worker processes at most (never more than there are jobs).
        description: the progress bar's label (on stderr); ``None`` shows no bar. It also names the
            run in :class:`WorkerDiedError`.
        on_done: called with each finished job.

    Raises:
        WorkerDiedError: a worker process died.
        Exception: the first exception a job raised, re-raised here. Jobs not yet started are
            cancelled; the running ones are waited for, so no worker still writes once the caller
            cleans up.
    """
    jobs = list(jobs)
    results: list = [None] * len(jobs)
    with tqdm(total=len(jobs), desc=description, unit="case", dynamic_ncols=True,
              disable=description is None) as progress:

        def finished(index: int, result) -> None:
            results[index] = result
            if on_done is not None:
                on_done(jobs[index])
            progress.update()

        if num_processes <= 1 or len(jobs) <= 1:
            for index, job in enumerate(jobs):
                finished(index, worker(job))
            return results
        executor = ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=multiprocessing.get_context("spawn"))
        try:
            index_of = {executor.submit(worker, job): index for index, job in enumerate(jobs)}
            for future in as_completed(index_of):
                try:
                    result = future.result()
                except BrokenProcessPool as e:
                    raise WorkerDiedError(
                        f"a worker process died{f' ({description})' if description else ''}: killed, or out of "
                        f"memory? Run again with fewer worker processes (-np, {num_processes} now)") from e
                finished(index_of[future], result)
        except BaseException:
            # wait for the running jobs, so that none still writes once the caller cleans up
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        # every job is done: the idle workers exit in the background (with torch imported that takes
        # seconds, which the caller need not wait for)
        executor.shutdown(wait=False)
    return results
