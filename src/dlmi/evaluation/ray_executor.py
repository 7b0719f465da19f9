"""The benchmark grid on a Ray cluster: each cell is a task on a worker actor that loaded the
model once (one actor per GPU or per CPU slot) and streams rows back as each target finishes.

The driver stays the only writer of the results file (the caller's `emit`), so resume rules
are those of a serial run. A cell whose worker died is resubmitted less the rows already
written; a row that still arrives twice is dropped by the writer. Ray is optional
(`pip install 'dlmi[ray]'`); nothing here runs without `--ray`.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from dlmi.errors import UsageError
from dlmi.evaluation.cells import Cell, run_cell

log = logging.getLogger(__name__)

REVIVE_SECONDS = 300  # a dead worker not back after this long is given up (its node is gone)


class BenchWorker:
    """A Ray actor's body: the model, loaded once, and the cells run on it."""

    def __init__(self, model: str, device: str | None, dtype: str | None, threads: int):
        import torch

        from dlmi.model.models import load_model

        torch.set_num_threads(threads)
        self.where = {"executor": "ray", "host": socket.gethostname(), "worker_pid": os.getpid()}
        self.error: Exception | None = None
        try:
            self.lm = load_model(model, device=device, dtype=dtype)
        except Exception as exc:  # raised again by the first call, where the driver sees it
            self.error = exc

    def ready(self) -> bool:
        """Answers once the actor is up (after a restart, with its model loaded)."""
        return True

    def call(self, fn: Callable, *args):
        """fn(lm, *args) on this worker's model (e.g. the grid's targets)."""
        if self.error:
            raise self.error
        return fn(self.lm, *args)

    def run(self, cell: Cell):
        """Yield the cell's rows as its targets finish (a Ray streaming generator).

        The batch runs in a helper thread because run_inversion reports rows by callback."""
        if self.error:
            raise self.error
        rows: queue.Queue = queue.Queue()
        end = object()

        def work():
            try:
                run_cell(self.lm, cell, rows.put, provenance=self.where)
            except BaseException as exc:  # handed to the consumer, raised there
                rows.put(exc)
            rows.put(end)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (item := rows.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()


def _import_ray():
    # Ray's C++ core logs every failed connection attempt to stderr; our error says it once.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'dlmi[ray]' (or pip install ray)") from None
    return ray


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail at once on a HOST:PORT nobody listens on (ray.init would wait over a minute)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto: "
                         "change --ray ADDRESS (or executor.ray.address)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UsageError(f"no Ray cluster answers at {address} ({exc.strerror or exc}): start "
                         "one with `ray start --head`, or change --ray ADDRESS") from None


def probe_cluster(address: str, timeout: float) -> None:
    """Connect to the cluster once in a child process that can be stopped: ray.init on an
    address where something other than Ray listens never returns, and cannot be interrupted."""
    code = ("import logging, sys, ray\n"
            "ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False,"
            " logging_level=logging.ERROR)\nray.shutdown()\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, address], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UsageError(f"no Ray cluster answered at {address} within {timeout:g} s (is "
                         "something else listening there?): change --ray ADDRESS, or raise "
                         "executor.ray.connect_timeout") from None
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise UsageError(f"cannot connect to Ray at {address} ({reason}): change --ray ADDRESS")


class RayGrid:
    """Workers on a Ray cluster for one grid run: `with RayGrid(...) as grid: grid.run(...)`.

    Connects to the cluster (or starts a local one) unless Ray is already initialised in this
    process, which it then leaves running."""

    def __init__(self, options, model: str, device: str | None = None, dtype: str | None = None):
        self.options = options
        self.model, self.device, self.dtype = model, device, dtype
        self.ray = _import_ray()
        self.workers: list = []
        self.slots = 0
        self._started = False

    def __enter__(self) -> RayGrid:
        ray, opts = self.ray, self.options
        if not ray.is_initialized():
            address = opts.address or os.environ.get("RAY_ADDRESS") or None
            if address not in (None, "auto", "local"):
                check_reachable(address)
                probe_cluster(address, opts.connect_timeout)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise UsageError(f"cannot connect to Ray ({exc}): change --ray ADDRESS") from None
            self._started = True
        try:
            self.slots = self._slots(ray.cluster_resources())
            self._add_workers(1)  # one at first: it makes the targets
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _slots(self, resources: dict) -> int:
        """Workers the cluster holds at the requested resources per worker."""
        opts = self.options
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if opts.gpus_per_task > gpus:
            raise UsageError(f"the Ray cluster has {gpus:g} GPU(s) and gpus_per_task is "
                             f"{opts.gpus_per_task:g}: set executor.ray.gpus_per_task=0 for "
                             "CPU workers, or add GPU nodes")
        if opts.cpus_per_task > cpus:
            raise UsageError(f"the Ray cluster has {cpus:g} CPU(s) and cpus_per_task is "
                             f"{opts.cpus_per_task:g}: lower executor.ray.cpus_per_task")
        slots = math.floor(cpus / opts.cpus_per_task)
        if opts.gpus_per_task:
            slots = min(slots, math.floor(gpus / opts.gpus_per_task))
        return min(slots, opts.workers) if opts.workers else slots

    def _add_workers(self, count: int) -> None:
        opts = self.options
        actor = self.ray.remote(BenchWorker).options(
            num_cpus=opts.cpus_per_task, num_gpus=opts.gpus_per_task,
            max_restarts=-1, max_task_retries=0)  # a lost worker comes back; the driver resubmits
        threads = max(1, math.floor(opts.cpus_per_task))
        while len(self.workers) < count:
            self.workers.append(actor.remote(self.model, self.device, self.dtype, threads))

    def call(self, fn: Callable, *args):
        """fn(lm, *args) on the first worker; its exceptions are raised here as themselves."""
        return self._get(self.workers[0].call.remote(fn, *args))

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the code raised: raise it here
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None

    def run(self, cells: list[Cell], emit: Callable[[dict], None], done: set[tuple],
            on_cell: Callable[[Cell], None] | None = None) -> None:
        """Run the cells on the workers, emit(row) on this process as rows arrive.

        done: the keys already written (emit adds to it); a resubmitted cell skips them."""
        ray = self.ray
        self._add_workers(min(self.slots, len(cells)))
        todo = deque((cell, 0) for cell in cells)  # (cell, tries so far)
        idle = list(self.workers)
        running: dict = {}  # streaming generator -> (worker, cell, tries); __exit__ stops them
        reviving: dict = {}  # ready() call -> (a worker Ray is restarting, since when)
        while todo or running:
            if not (idle or running or reviving):
                raise RuntimeError("every Ray worker is gone (none came back within "
                                   f"{REVIVE_SECONDS} s of dying): check the cluster's nodes")
            while todo and idle:
                cell, tries = todo.popleft()
                cell = cell.without(done)
                if cell.rows:
                    if on_cell:
                        on_cell(cell)
                    worker = idle.pop()
                    running[worker.run.remote(cell)] = (worker, cell, tries)
            if not running and not reviving:
                continue
            [event], _ = ray.wait(list(running) + list(reviving), num_returns=1)
            if event in reviving:
                worker, since = reviving.pop(event)
                try:
                    ray.get(event)
                    idle.append(worker)
                except ray.exceptions.RayError:  # still restarting: ask again shortly
                    if time.monotonic() - since < REVIVE_SECONDS:
                        time.sleep(0.5)
                        reviving[worker.ready.remote()] = (worker, since)
                continue
            worker, cell, tries = running[event]
            try:
                row = self._get(next(event))
            except StopIteration:
                del running[event]
                idle.append(worker)
                continue
            except ray.exceptions.RayTaskError:
                raise
            except ray.exceptions.RayError as exc:  # the worker died: Ray restarts it
                del running[event]
                reviving[worker.ready.remote()] = (worker, time.monotonic())
                if tries >= self.options.max_retries:
                    raise RuntimeError(f"a Ray worker died {tries + 1} times running "
                                       f"{cell.method} (N = {cell.prompt_length}); last "
                                       f"error: {str(exc).splitlines()[0]}") from None
                log.warning("a Ray worker died running %s (N = %d); resubmitting the "
                            "cell's unfinished rows", cell.method, cell.prompt_length)
                todo.appendleft((cell, tries + 1))
                continue
            emit(row)
