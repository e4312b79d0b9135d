"""Micro-batching: requests that can share a forward pass are run as one batch on one inference thread.

Written here rather than taken from a serving framework: the policy is small and the server needs it exactly
(batch by key: images of one size and options; start a batch when ``max_batch`` items of the oldest item's key
wait, when the oldest has waited ``max_wait_s``, or at once when no other request is on its way, so a lone
request never waits for company that is not coming; refuse new work past ``max_queue`` waiting items so the
server answers 503 instead of queuing without bound; skip items whose caller gave up). "On its way": the server
:meth:`announces <MicroBatcher.announce>` a request when it starts reading it and submits (or withdraws) it once
decoded. One thread runs the model, so
torch's intra-op threads are not oversubscribed by concurrent forwards; the callers decode and encode on their
own threads while it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(RuntimeError):
    """The batcher holds ``max_queue`` waiting items: the caller should retry later (HTTP 503)."""


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Runs ``run(key, payloads) -> results`` (one result per payload, in order) on a worker thread for batches of
    up to ``max_batch`` payloads of equal key.

    :meth:`submit` returns a :class:`concurrent.futures.Future` of the payload's result (or of the exception
    ``run`` raised for its batch). ``on_batch(size, seconds)`` is called after every batch (metrics).
    """

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]], *, max_batch: int = 8,
                 max_wait_s: float = 0.01, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1 and max_wait_s >= 0; got {max_batch}, "
                             f"{max_queue}, {max_wait_s}")
        self._run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self._on_batch = on_batch
        self._pending: list[_Item] = []
        self._arriving = 0  # announced requests not yet submitted or withdrawn
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="seglab-inference", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch running)."""
        return len(self._pending)

    def announce(self) -> None:
        """A request is on its way (being read or decoded): a forming batch may wait for it."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (it was refused)."""
        with self._cond:
            self._arriving -= 1
            self._cond.notify_all()

    def submit(self, key: Hashable, payload: Any, *, announced: bool = False) -> Future:
        """Queue ``payload`` (``announced``: it was announced, and is no longer on its way); raises
        :class:`QueueFull` when ``max_queue`` items already wait."""
        item = _Item(key, payload)
        with self._cond:
            if announced:
                self._arriving -= 1
                self._cond.notify_all()
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests wait for the model (the limit is {self.max_queue})")
            self._pending.append(item)
            self._cond.notify()
        return item.future

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the running batch, fail the waiting items and end the worker thread."""
        with self._cond:
            self._stopped = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for item in pending:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._thread.join(timeout)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            first = self._pending[0]
            deadline = first.arrived + self.max_wait_s
            while True:
                same = [item for item in self._pending if item.key == first.key][: self.max_batch]
                remaining = deadline - time.monotonic()
                if len(same) >= self.max_batch or remaining <= 0 or self._stopped or self._arriving <= 0:
                    break
                self._cond.wait(remaining)
            taken = {id(item) for item in same}
            self._pending = [item for item in self._pending if id(item) not in taken]
        return [item for item in same if item.future.set_running_or_notify_cancel()]  # drop abandoned ones

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = self._run(batch[0].key, [item.payload for item in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} results for a batch of {len(batch)}")
            except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the batch's error
                for item in batch:
                    item.future.set_exception(exc)
            else:
                for item, result in zip(batch, results, strict=True):
                    item.future.set_result(result)
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - start)


__all__ = ["MicroBatcher", "QueueFull"]
