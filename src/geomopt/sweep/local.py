"""The ``local`` backend: a pool of worker processes on this machine (no extra dependency).

Each worker is a long-lived process that runs one attempt at a time, so a worker that dies (a
segfault, ``os._exit``, the OOM killer) or overruns the trial timeout is attributed to exactly one
attempt: the driver kills and replaces that one process and the other trials go on (a
``ProcessPoolExecutor`` would break as a whole). With one worker and no timeout the attempts run
in the driver process itself (no start-up cost; a crash there ends the sweep).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import signal
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Any

from geomopt.sweep.trial import execute


def _exit_with_driver(driver: int) -> None:
    """Exit this worker as soon as the driver process ends, so that a killed driver leaves no training
    running (the forkserver itself lives on while any worker does)."""
    try:
        pidfd = os.pidfd_open(driver)  # Linux: readable once the driver has ended
    except (AttributeError, OSError):
        pidfd = None
    while True:
        if pidfd is not None:
            if select.select([pidfd], [], [], 1.0)[0]:
                os._exit(1)
            continue
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            os._exit(1)
        time.sleep(1)


def _stop(signum, frame) -> None:
    """SIGTERM from the driver (a Ctrl-C, a timeout): end the attempt like ``sys.exit``, so that its
    ``finally`` blocks and the process's exit handlers run (they unregister the semaphores that torch and
    tqdm created: killed, the worker would leave them to the resource tracker's "leaked semaphore" warning)."""
    raise SystemExit(0)


def _serve(conn, driver: int) -> None:
    """Worker loop: receive (job, inputs, checkpoint, threads, scratch), send back ("ok", Output) or
    ("error", text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers
    signal.signal(signal.SIGTERM, _stop)
    threading.Thread(target=_exit_with_driver, args=(driver,), daemon=True).start()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            reply = ("ok", execute(*task))
        except SystemExit:
            raise
        except BaseException:
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # an unpicklable result
            conn.send(("error", traceback.format_exc()))


# imported once by the forkserver: torch, the training engine, the measures, scikit-learn's digits and
# torch._dynamo (which the first torch.optim.Optimizer imports: seconds)
PRELOAD = ["geomopt.sweep.trial", "geomopt.runs", "sklearn.datasets", "torch._dynamo"]


def _context():
    """Workers fork from a forkserver that has imported :data:`PRELOAD` once (a fresh worker then
    starts in milliseconds, not seconds), never from the driver itself; spawn where there is none."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, os.getpid()), daemon=True)
        self.process.start()
        child.close()

    def stop(self, now: bool) -> None:
        """End the worker: ``now``, its attempt too (SIGTERM: see :func:`_stop`), else once idle; killed
        if it has not ended within 5 s (stuck in native code)."""
        if now:
            self.process.terminate()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class LocalBackend:
    """Run attempts in ``workers`` spawned processes (``threads`` torch threads each)."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int = 1, in_process: bool | None = None):
        if workers < 1:
            raise ValueError(f"--jobs must be >= 1, got {workers}")
        self.workers, self.threads = workers, threads
        self.in_process = workers == 1 if in_process is None else in_process
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._done: list[tuple[int, str, Any]] = []
        self._ctx = _context()

    def start(self) -> None:
        pass

    def capacity(self) -> int:
        return self.workers

    def submit(self, key: int, payload: tuple, scratch: str | None = None) -> None:
        """Start an attempt; ``scratch``: its work folder (on this machine's filesystem, kept between attempts)."""
        if self.in_process:
            try:
                self._done.append((key, "ok", execute(*payload, threads=self.threads, scratch=scratch)))
            except Exception:
                self._done.append((key, "error", traceback.format_exc()))
            return
        worker = self._idle.pop() if self._idle else _Worker(self._ctx)
        worker.conn.send((*payload, self.threads, scratch))
        self._busy[key] = worker

    def poll(self, timeout: float) -> list[tuple[int, str, Any]]:
        """Finished attempts as (key, "ok" | "error" | "died", Output or error text)."""
        if self._done:
            done, self._done = self._done, []
            return done
        if not self._busy:
            return []
        by_conn = {w.conn: k for k, w in self._busy.items()}
        by_sentinel = {w.process.sentinel: k for k, w in self._busy.items()}
        ready = wait(list(by_conn) + list(by_sentinel), timeout)
        keys = sorted({by_conn[r] for r in ready if r in by_conn} | {by_sentinel[r] for r in ready if r in by_sentinel})
        done = []
        for key in keys:
            worker = self._busy.pop(key)
            try:
                status, value = worker.conn.recv() if worker.conn.poll() else (None, None)
            except (EOFError, OSError):
                status, value = None, None
            if status is None:  # the process ended without an answer
                worker.process.join(timeout=5)
                done.append((key, "died", f"worker process {worker.process.pid} died (exit code "
                                          f"{worker.process.exitcode})"))
                worker.stop(now=True)
            else:
                done.append((key, status, value))
                self._idle.append(worker)
        return done

    def cancel(self, key: int) -> None:
        """Stop the worker running ``key`` (a timeout); a fresh one takes its place when needed."""
        worker = self._busy.pop(key, None)
        if worker is not None:
            worker.stop(now=True)

    def close(self) -> None:
        for worker in self._idle:
            worker.stop(now=False)
        for worker in self._busy.values():
            worker.stop(now=True)
        self._idle, self._busy = [], {}
