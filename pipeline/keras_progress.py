"""Progress inside each Keras epoch: a tqdm bar in a terminal, plain periodic lines in logs.

Keras's own `verbose=2` prints one line per epoch, after it: minutes of silence on a CPU.
EpochProgress replaces it (the Trainer fits with verbose=0). When its stream is a terminal it
drives a tqdm bar per epoch (steps, rate, ETA, loss); otherwise (CI logs, a file, a pipe) it
prints a plain line every `interval_seconds` with the same figures, and never a carriage
return. Each epoch ends with one line of its metrics, in both cases.
"""

import sys
import time
from typing import IO, Dict, Optional

import tensorflow as tf


def _format_metrics(logs: Optional[Dict[str, float]]) -> str:
    return ", ".join(f"{name} {float(value):.4f}" for name, value in sorted((logs or {}).items())
                     if name != "learning_rate" and isinstance(value, (int, float)))


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class EpochProgress(tf.keras.callbacks.Callback):
    """A progress bar (or, off a terminal, periodic lines) with rate and ETA in each epoch.

    Args:
      epochs: the epochs fit runs (for "epoch 2/5").
      steps_per_epoch: the steps of one epoch (the bar's total and the ETA).
      stream: where to write (default sys.stdout, where the run's progress lines go).
      interactive: a tqdm bar (True) or plain lines (False); default: stream.isatty().
      interval_seconds: off a terminal, the time between two progress lines.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, stream: Optional[IO[str]] = None,
                 interactive: Optional[bool] = None, interval_seconds: float = 30.0):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.stream = stream if stream is not None else sys.stdout
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self.interval_seconds = interval_seconds
        self._bar = None
        self._epoch = 0
        self._step = 0
        self._started = 0.0
        self._last_line = 0.0

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch
        self._step = 0
        self._started = self._last_line = time.perf_counter()
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=self.steps_per_epoch, desc=f"  epoch {epoch + 1}/{self.epochs}",
                             unit="step", file=self.stream, leave=False, dynamic_ncols=True)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._step = batch + 1
        if self._bar is not None:
            self._bar.update(self._step - self._bar.n)
            if logs and "loss" in logs:
                self._bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval_seconds and self._step < self.steps_per_epoch:
            self._last_line = now
            self._write(self.describe_step(now - self._started, logs))

    def describe_step(self, elapsed: float, logs=None) -> str:
        """The plain progress line: step, share, rate, ETA (and the loss so far)."""
        rate = self._step / elapsed if elapsed > 0 else 0.0
        left = (self.steps_per_epoch - self._step) / rate if rate > 0 else float("nan")
        loss = f", loss {float(logs['loss']):.4f}" if logs and "loss" in logs else ""
        eta = _format_seconds(left) if left == left else "?"
        return (f"  epoch {self._epoch + 1}/{self.epochs}: step {self._step}/{self.steps_per_epoch}"
                f" ({100 * self._step // self.steps_per_epoch}%), {rate:.1f} steps/s, "
                f"ETA {eta}{loss}")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elapsed = time.perf_counter() - self._started
        metrics = _format_metrics(logs)
        self._write(f"  epoch {epoch + 1}/{self.epochs} done in {_format_seconds(elapsed)}"
                    f" ({self._step / elapsed if elapsed > 0 else 0:.1f} steps/s)"
                    + (f": {metrics}" if metrics else ""))

    def on_train_end(self, logs=None) -> None:
        if self._bar is not None:  # fit stopped inside an epoch
            self._bar.close()
            self._bar = None
