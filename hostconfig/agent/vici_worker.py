"""VICI calls off the daemon's loop thread: one worker thread runs them in order, the loop takes in their results.

charon answers VICI only when it has the SA a request needs: while it runs an updown hook (it waits for the hook) a
list-sas waits too (a terminate of that SA likely as well), up to vici_client.CONNECT_TIMEOUT per read. On the loop
thread that wait stopped the probes and the failover decisions for as long. Here the loop only submits a call and, on
a later round, runs what is to be done with its result (``then``, on the loop's thread: decisions and state stay
single-threaded, the worker does I/O only). One thread, first in first out: a listing asked for after a repair's
commands sees their effect.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Given the caller's context (finish's arguments), then the call's result or the exception it raised (result None).
Then = Callable[..., None]


@dataclass
class _Job:
    call: Callable[[], Any]
    then: Then


@dataclass
class _Done:
    job: _Job
    result: Any
    error: Exception | None


class ViciWorker:
    def __init__(self, name: str = "vici-worker") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Condition()
        self._unfinished = 0  # submitted, and their results not taken in yet

    def submit(self, call: Callable[[], Any], then: Then) -> None:
        """Run ``call`` on the worker thread; the next ``finish()`` after it returned runs ``then``. Never blocks."""
        with self._lock:
            self._unfinished += 1
            if self._thread is None:  # started at the first call: a Repairer in a test that never lists costs none
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put(_Job(call, then))

    def finish(self, *context: Any) -> int:
        """On the loop's thread: run ``then(*context, result, error)`` of every call that has returned; never waits.
        Returns how many."""
        ran = 0
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return ran
            try:
                done.job.then(*context, done.result, done.error)
            finally:
                with self._lock:
                    self._unfinished -= 1
                    self._lock.notify_all()
            ran += 1

    def wait(self, timeout: float) -> bool:
        """Wait until every submitted call has returned, at most ``timeout``; the next ``finish()`` takes their results
        in (tests, and stopping: the daemon's loop never waits). False when some are still under way."""
        with self._lock:
            return self._lock.wait_for(lambda: self._done.qsize() >= self._unfinished, timeout)

    def close(self, timeout: float) -> bool:
        """Let the calls under way return (a repair's initiate after its terminate: a tunnel half rebuilt has no
        IKE_SA and nobody initiating it), at most ``timeout``, then stop the thread. False when some did not."""
        returned = self.wait(timeout)
        if not returned:
            log.warning("stopping with VICI calls still under way after %.0f s (charon does not answer)", timeout)
        self._jobs.put(None)
        return returned

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                done = _Done(job, job.call(), None)
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which decides; the worker must live on
                done = _Done(job, None, exc)
            with self._lock:
                self._done.put(done)
                self._lock.notify_all()
