"""Server-side dynamic batching with TF Serving's batching parameters.

Requests for one signature of one model version are queued; batch threads take
as many queued requests as fit in `max_batch_size`, waiting at most
`batch_timeout_micros` after the oldest one for the batch to fill, concatenate
their inputs along the batch dimension, pad to the next `allowed_batch_sizes`
entry, run the model once and hand each request its slice of the outputs.
"""

import collections
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from serving.config import BatchingParameters
from serving.errors import DeadlineExceededError, InternalError, ServingError, UnavailableError

Arrays = Dict[str, np.ndarray]


class _Task:
    __slots__ = ("inputs", "size", "enqueued", "done", "outputs", "error", "cancelled")

    def __init__(self, inputs: Arrays, size: int):
        self.inputs = inputs
        self.size = size
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs: Optional[Arrays] = None
        self.error: Optional[BaseException] = None
        self.cancelled = False


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
            DeadlineExceededError: no result within timeout seconds.
        """
        maximum = self._parameters.max_batch_size
        if size > maximum:
            pieces = [self.submit({key: value[start:start + maximum] for key, value in inputs.items()},
                                  min(maximum, size - start), timeout)
                      for start in range(0, size, maximum)]
            return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}
        task = _Task(inputs, size)
        with self._condition:
            if self._stopping:
                raise UnavailableError(f"{self._name}: the server is shutting down")
            if self._queued_size + size > self._capacity:
                raise UnavailableError(
                    f"{self._name}: the batch scheduling queue is full ({self._capacity} rows queued); "
                    "retry later or raise max_enqueued_batches")
            self._queue.append(task)
            self._queued_size += size
            self._condition.notify()
        if not task.done.wait(timeout):
            with self._condition:
                task.cancelled = True
                if task in self._queue:  # not taken yet: free its place in the queue now
                    self._queue.remove(task)
                    self._queued_size -= task.size
            if not task.done.is_set():
                raise DeadlineExceededError(f"{self._name}: no result within {timeout:.3f} s")
        if task.error is not None:
            raise task.error
        return task.outputs

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
            for task in batch:
                task.done.set()
        if self._on_batch is not None:
            self._on_batch(total, padded)

    def stop(self, timeout: float = 30.0) -> None:
        """Runs what is queued, then stops the batch threads."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)
