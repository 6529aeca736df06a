"""Where per-run work runs: in this process, in local worker processes, or as tasks on a Dask cluster.

``--dask local:N`` starts a ``dask.distributed.LocalCluster`` of N single-threaded worker processes;
``--dask tcp://host:8786`` (or any scheduler address) uses a running cluster, e.g. one that
``dask-jobqueue`` started on Slurm or PBS. Workers of a remote cluster must see the input files and the
store at the same paths (a shared file system) or write the store to a URL. Each task is one run, streamed
as in a single process, so memory per task stays that of one run.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from neurostorm.errors import InputError


def check_dask_address(address: str) -> str:
    """``local:N`` or a scheduler address; anything else is refused."""
    if address.startswith("local:"):
        count = address.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise InputError("--dask", f"local:N needs a positive number of workers, got {address!r}")
    elif ":" not in address:
        raise InputError("--dask", f"expected local:N or a scheduler address such as tcp://host:8786, got {address!r}")
    return address


def _exit_on_signal(signum: int, frame: object) -> None:
    # a second SIGTERM (the main process ending its workers) must not cut short the unwinding of the first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the I/O tasks a stop abandons are no problem to report
    raise SystemExit(128 + signum)  # unwinds the run in progress (its temporary is removed), then ends quietly


def _worker_signals() -> None:
    """In a local worker process: Ctrl-C is the main process's to handle (it stops the workers), and SIGTERM
    (from a scheduler, or from the main process stopping) ends the worker once the run it was writing is undone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)


class TaskRunner:
    """Run independent tasks and hand back their results as they finish.

    >>> with TaskRunner(workers=4) as runner:            # or TaskRunner(dask="local:4" | "tcp://host:8786")
    ...     for index, result in runner.run(function, [(a1, b1), (a2, b2)]):
    ...         ...

    Connecting to a cluster happens in the constructor, so an unreachable scheduler fails before any work;
    how long a connection is tried is Dask's ``distributed.comm.timeouts.connect`` (environment:
    ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=10s``).
    """

    def __init__(self, workers: int = 1, dask: str | None = None) -> None:
        self.workers, self.client, self.cluster = workers, None, None
        self.pool: ProcessPoolExecutor | None = None
        self.other_children: set = set()  # child processes that were not the pool's when it started
        if dask is not None:
            self._connect(check_dask_address(dask))

    def _connect(self, address: str) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InputError(address, "--dask needs dask.distributed: pip install 'neurostorm[cluster]'") from None
        if address.startswith("local:"):
            self.cluster = LocalCluster(n_workers=int(address.split(":")[1]), threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            return
        try:
            self.client = Client(address)
        except (OSError, TimeoutError) as err:
            raise InputError(address, f"cannot reach the Dask scheduler ({type(err).__name__}: {err})") from None

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=error_type is None, cancel_futures=True)
            if error_type is not None:  # stopped or failed: end the runs in progress now, not when they finish
                workers = [p for p in multiprocessing.active_children() if p not in self.other_children]  # ours alone
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.join(timeout=30)
                    if worker.is_alive():  # stuck past its unwinding: nothing of it is worth waiting for
                        worker.kill()
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def run(self, function: Callable[..., Any], arguments: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """(index into ``arguments``, ``function(*arguments[index])``) for every task, in finishing order."""
        if self.client is not None:
            from distributed import as_completed as dask_completed

            futures = {self.client.submit(function, *args, pure=False): i for i, args in enumerate(arguments)}
            for future in dask_completed(futures):
                yield futures[future], future.result()
                future.release()
        elif self.workers <= 1:
            for index, args in enumerate(arguments):
                yield index, function(*args)
        else:
            self.other_children = set(multiprocessing.active_children())
            self.pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_worker_signals)
            futures = {self.pool.submit(function, *args): i for i, args in enumerate(arguments)}
            for future in as_completed(futures):
                yield futures[future], future.result()
