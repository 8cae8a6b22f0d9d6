"""Server-side dynamic batching with TF Serving's batching parameters.

Requests for one signature of one model version are queued; batch threads take
as many queued requests as fit in `max_batch_size`, waiting at most
`batch_timeout_micros` after the oldest one for the batch to fill, concatenate
their inputs along the batch dimension, pad to the next `allowed_batch_sizes`
entry, run the model once and hand each request its slice of the outputs.
"""

import asyncio
import collections
import logging
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from tfprod.serving.config import BatchingParameters
from tfprod.serving.errors import DeadlineExceededError, InternalError, ServingError, UnavailableError

LOG = logging.getLogger(__name__)

Arrays = Dict[str, np.ndarray]


class _Task:
    """One queued request: sync callers wait on `done`, asyncio callers on `future` of `loop`."""

    __slots__ = ("inputs", "size", "enqueued", "done", "outputs", "error", "cancelled", "loop", "future")

    def __init__(self, inputs: Arrays, size: int, loop=None, future=None):
        self.inputs = inputs
        self.size = size
        self.enqueued = time.monotonic()
        self.loop = loop
        self.future = future
        self.done = threading.Event() if future is None else None
        self.outputs: Optional[Arrays] = None
        self.error: Optional[BaseException] = None
        self.cancelled = False


def _resolve(tasks: List[_Task]) -> None:
    """Runs on an event loop: hands finished tasks their outputs or errors."""
    for task in tasks:
        if task.future.done():  # timed out or cancelled meanwhile
            continue
        if task.error is not None:
            task.future.set_exception(task.error)
        else:
            task.future.set_result(task.outputs)


def _check_timeout(name: str, timeout: Optional[float]) -> None:
    """A request whose deadline has passed is not queued: a batch would run it for nobody."""
    if timeout is not None and timeout <= 0:
        raise DeadlineExceededError(f"{name}: the request's deadline passed before it was queued")


def padded_size(size: int, allowed_sizes) -> int:
    """The smallest allowed batch size >= size (size itself when none are configured)."""
    for allowed in allowed_sizes:
        if allowed >= size:
            return allowed
    return size


class SignatureBatcher:
    """Batches calls of one model function whose inputs and outputs are batch-major.

    Args:
        run: calls the model on a dict of batched inputs and returns batched outputs.
        parameters: TF Serving's batching parameters.
        name: used in thread names and errors.
        on_batch: called with (batch size before padding, padded size) after each batch.
    """

    def __init__(self, run: Callable[[Arrays], Arrays], parameters: BatchingParameters,
                 name: str = "batcher", on_batch: Optional[Callable[[int, int], None]] = None):
        self._run = run
        self._parameters = parameters
        self._name = name
        self._on_batch = on_batch
        self._queue: collections.deque = collections.deque()
        self._queued_size = 0
        self._capacity = parameters.max_batch_size * parameters.max_enqueued_batches
        self._condition = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
                         for index in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Arrays, size: int, timeout: Optional[float] = None) -> Arrays:
        """Runs one request (size rows) in a batch and returns its outputs.

        Requests larger than max_batch_size are split into pieces that each fit.

        Raises:
            UnavailableError: the queue is full or the batcher is stopping.
            DeadlineExceededError: no result within timeout seconds (at once when it is 0 or less:
                the request is not queued).
        """
        _check_timeout(self._name, timeout)
        maximum = self._parameters.max_batch_size
        if size > maximum:
            pieces = [self.submit({key: value[start:start + maximum] for key, value in inputs.items()},
                                  min(maximum, size - start), timeout)
                      for start in range(0, size, maximum)]
            return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}
        task = _Task(inputs, size)
        self._enqueue(task)
        if not task.done.wait(timeout):
            self._withdraw(task)
            if not task.done.is_set():
                raise DeadlineExceededError(f"{self._name}: no result within {timeout:.3f} s")
        if task.error is not None:
            raise task.error
        return task.outputs

    async def submit_async(self, inputs: Arrays, size: int, timeout: Optional[float] = None) -> Arrays:
        """Like submit, for asyncio code: the event loop is not blocked while the batch runs.

        The batch thread hands all the answers of one batch to the loop in one call.

        Raises:
            UnavailableError: the queue is full or the batcher is stopping.
            DeadlineExceededError: no result within timeout seconds (at once when it is 0 or less).
        """
        _check_timeout(self._name, timeout)
        maximum = self._parameters.max_batch_size
        if size > maximum:
            pieces = await asyncio.gather(*[
                self.submit_async({key: value[start:start + maximum] for key, value in inputs.items()},
                                  min(maximum, size - start), timeout)
                for start in range(0, size, maximum)])
            return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}
        loop = asyncio.get_running_loop()
        task = _Task(inputs, size, loop, loop.create_future())
        self._enqueue(task)
        expiry = None
        if timeout is not None:
            expiry = loop.call_later(timeout, self._expire, task, timeout)
        try:
            return await task.future
        except asyncio.CancelledError:  # the caller went away (e.g. the RPC was cancelled)
            self._withdraw(task)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    def _expire(self, task: _Task, timeout: float) -> None:
        if not task.future.done():
            self._withdraw(task)
            task.future.set_exception(DeadlineExceededError(f"{self._name}: no result within {timeout:.3f} s"))

    def _enqueue(self, task: _Task) -> None:
        with self._condition:
            if self._stopping:
                raise UnavailableError(f"{self._name}: the server is shutting down")
            if self._queued_size + task.size > self._capacity:
                raise UnavailableError(
                    f"{self._name}: the batch scheduling queue is full ({self._capacity} rows queued); "
                    "retry later or raise max_enqueued_batches")
            was_empty = not self._queue
            self._queue.append(task)
            self._queued_size += task.size
            # Wake a batch thread only when it has something new to decide: the first request
            # starts a batch's timeout, a full batch ends it. Waking it for every request would
            # cost a thread switch per request while the batch fills.
            if was_empty or self._queued_size >= self._parameters.max_batch_size:
                self._condition.notify()

    def _withdraw(self, task: _Task) -> None:
        """Marks a task abandoned and frees its place in the queue if no batch took it yet."""
        with self._condition:
            task.cancelled = True
            if task in self._queue:
                self._queue.remove(task)
                self._queued_size -= task.size

    def _take_batch(self) -> Optional[List[_Task]]:
        timeout = self._parameters.batch_timeout_micros / 1e6
        maximum = self._parameters.max_batch_size
        with self._condition:
            while True:
                if self._queue:
                    waited = time.monotonic() - self._queue[0].enqueued
                    if self._queued_size >= maximum or waited >= timeout or self._stopping:
                        break
                    self._condition.wait(timeout - waited)
                elif self._stopping:
                    return None
                else:
                    self._condition.wait()
            batch, total = [], 0
            while self._queue and total + self._queue[0].size <= maximum:
                task = self._queue.popleft()
                self._queued_size -= task.size
                if not task.cancelled:
                    batch.append(task)
                    total += task.size
            if self._queue:  # what is left starts the next batch's timeout in another thread
                self._condition.notify()
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: List[_Task]) -> None:
        total = sum(task.size for task in batch)
        padded = padded_size(total, self._parameters.allowed_batch_sizes)
        try:
            inputs = {}
            for key in batch[0].inputs:
                parts = [task.inputs[key] for task in batch]
                if padded > total:
                    # Pad with copies of the first row, as TF Serving does.
                    parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
                inputs[key] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            outputs = self._run(inputs)
            start = 0
            for task in batch:
                task.outputs = {key: value[start:start + task.size] for key, value in outputs.items()}
                start += task.size
        except ServingError as error:
            for task in batch:
                task.error = error
        except Exception as error:  # the model failed: every request in the batch gets the error
            failure = InternalError(f"{self._name}: the model failed on a batch of {total}: {error}")
            for task in batch:
                task.error = failure
        finally:
            waiting_loops = {}
            for task in batch:
                if task.done is not None:
                    task.done.set()
                else:
                    waiting_loops.setdefault(task.loop, []).append(task)
            for loop, tasks in waiting_loops.items():
                try:
                    loop.call_soon_threadsafe(_resolve, tasks)
                except RuntimeError:  # the loop is closed: nobody waits for these answers any more
                    LOG.debug("%s: %d answers dropped, their event loop is closed", self._name, len(tasks))
        if self._on_batch is not None:
            self._on_batch(total, padded)

    def stop(self, timeout: float = 30.0) -> None:
        """Runs what is queued, then stops the batch threads."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)
