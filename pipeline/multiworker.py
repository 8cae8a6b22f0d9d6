"""Local multi-worker training: N worker processes on 127.0.0.1, each with its own TF_CONFIG.

MultiWorkerMirroredStrategy must be created when a process starts, before TensorFlow runs
any op; inside TFX's Trainer executor TensorFlow is long initialised. So for
``runtime.strategy=multi_worker_mirrored`` with ``runtime.num_workers=N`` (and no
TF_CONFIG), ``pipeline.trainer.run_fn`` calls ``run_local_job``, which:

1. writes the Trainer's inputs and outputs (the FnArgs fields run_fn reads) to
   ``<model_run_dir>/multiworker/job.json``;
2. starts ``python -m tfprod.pipeline.multiworker --job job.json`` N times, on free ports, each
   with TF_CONFIG naming all N workers and its own index;
3. streams each worker's output, prefixed ``[worker i]``, and keeps it in
   ``<model_run_dir>/multiworker/attempt-<a>-worker-<i>.log``;
4. waits at most runtime.worker_timeout_seconds. When a worker fails, the others are
   stopped (a MultiWorkerMirroredStrategy cluster cannot continue with a worker missing)
   and the whole job restarts, up to runtime.worker_restarts times; BackupAndRestore
   makes the restarted job resume from the last finished epoch.

Worker 0 is the chief: it writes fn_args.serving_model_dir, the TensorBoard logs and
training_stats.json; the others save to temporary dirs, as TensorFlow requires.
"""

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from tfprod import errors
from tfprod.pipeline import config as config_lib
from tfprod.pipeline import distribute

JOB_SUBDIR = "multiworker"
JOB_FILE = "job.json"
POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 40


class MultiWorkerError(errors.RunFailure):
    """A local worker failed or the job timed out; the message has the worker's last lines."""


@dataclasses.dataclass
class JobFnArgs:
    """The fields of TFX's FnArgs that pipeline.trainer.run_fn reads (JSON-serialisable)."""

    train_files: List[str]
    eval_files: List[str]
    transform_output: str
    serving_model_dir: str
    model_run_dir: str
    custom_config: Dict[str, Any]
    # The Tuner's best hyperparameters (TFX FnArgs.hyperparameters), when it ran.
    hyperparameters: Optional[Dict[str, Any]] = None

    @classmethod
    def from_fn_args(cls, fn_args: Any) -> "JobFnArgs":
        return cls(train_files=list(fn_args.train_files), eval_files=list(fn_args.eval_files),
                   transform_output=fn_args.transform_output,
                   serving_model_dir=fn_args.serving_model_dir,
                   model_run_dir=fn_args.model_run_dir,
                   custom_config=dict(fn_args.custom_config),
                   hyperparameters=getattr(fn_args, "hyperparameters", None))


@dataclasses.dataclass
class Worker:
    """One running worker process."""

    index: int
    process: subprocess.Popen
    log_path: str
    tail: List[str] = dataclasses.field(default_factory=list)
    reader: Optional[threading.Thread] = None


@dataclasses.dataclass
class JobResult:
    """What happened: attempts made and each attempt's exit codes."""

    attempts: int
    exit_codes: List[List[Optional[int]]]
    job_dir: str


def free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """count distinct free TCP ports on host (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stream(worker: Worker, sink: Optional[TextIO]) -> None:
    with open(worker.log_path, "w", encoding="utf-8") as log:
        for line in worker.process.stdout:
            log.write(line)
            log.flush()
            worker.tail.append(line.rstrip("\n"))
            del worker.tail[:-LOG_TAIL_LINES]
            if sink is not None:
                sink.write(f"[worker {worker.index}] {line}")
                sink.flush()


def start_worker(index: int, ports: Sequence[int], job_path: str, log_path: str,
                 sink: Optional[TextIO]) -> Worker:
    """Starts `python -m tfprod.pipeline.multiworker --job job_path` as worker `index`."""
    environ = dict(os.environ, TF_CONFIG=json.dumps(distribute.local_tf_config(ports, index)))
    process = subprocess.Popen(
        [sys.executable, "-m", "tfprod.pipeline.multiworker", "--job", job_path],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    worker = Worker(index=index, process=process, log_path=log_path)
    worker.reader = threading.Thread(target=_stream, args=(worker, sink), daemon=True)
    worker.reader.start()
    return worker


def stop_workers(workers: Sequence[Worker]) -> None:
    """SIGTERM, then SIGKILL after a grace period, for every worker still running."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            worker.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def _wait(workers: Sequence[Worker], deadline: float) -> Optional[Worker]:
    """Waits until all workers exit 0 (returns None) or one fails (returns it)."""
    while True:
        codes = [worker.process.poll() for worker in workers]
        for worker, code in zip(workers, codes):
            if code is not None and code != 0:
                return worker
        if all(code == 0 for code in codes):
            return None
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(POLL_SECONDS)


def _finish_readers(workers: Sequence[Worker]) -> None:
    for worker in workers:
        if worker.reader is not None:
            worker.reader.join(timeout=5)


def run_local_job(fn_args: Any, experiment: config_lib.ExperimentConfig,
                  on_attempt: Optional[Callable[[int, List[Worker]], None]] = None,
                  sink: Optional[TextIO] = sys.stdout) -> JobResult:
    """Runs run_fn on runtime.num_workers local workers; returns when all succeeded.

    Args:
      fn_args: the Trainer's FnArgs (or anything with the JobFnArgs fields).
      experiment: the validated experiment (runtime.num_workers, timeouts, restarts).
      on_attempt: called with (attempt, workers) right after each attempt's workers start
        (tests use it to kill a worker mid-training).
      sink: where the workers' prefixed output is streamed (None: only the log files).

    Raises:
      MultiWorkerError: a worker failed more often than runtime.worker_restarts allows,
        or the job ran past runtime.worker_timeout_seconds.
    """
    runtime = experiment.runtime
    job = JobFnArgs.from_fn_args(fn_args)
    job_dir = os.path.join(job.model_run_dir, JOB_SUBDIR)
    os.makedirs(job_dir, exist_ok=True)
    job_path = os.path.join(job_dir, JOB_FILE)
    with open(job_path, "w", encoding="utf-8") as handle:
        json.dump(dataclasses.asdict(job), handle, indent=2)
    deadline = time.monotonic() + runtime.worker_timeout_seconds
    exit_codes: List[List[Optional[int]]] = []
    for attempt in range(runtime.worker_restarts + 1):
        ports = free_ports(runtime.num_workers)
        workers = [start_worker(index, ports, job_path,
                                os.path.join(job_dir, f"attempt-{attempt}-worker-{index}.log"),
                                sink)
                   for index in range(runtime.num_workers)]
        if sink is not None:
            sink.write(f"multi-worker job attempt {attempt}: {runtime.num_workers} workers on "
                       f"127.0.0.1:{','.join(map(str, ports))}; logs in {job_dir}\n")
        if on_attempt is not None:
            on_attempt(attempt, workers)
        try:
            failed = _wait(workers, deadline)
        except TimeoutError:
            stop_workers(workers)
            _finish_readers(workers)
            raise MultiWorkerError(
                f"the multi-worker job ran past runtime.worker_timeout_seconds="
                f"{runtime.worker_timeout_seconds}; the workers were stopped (logs in "
                f"{job_dir})") from None
        stop_workers(workers)
        _finish_readers(workers)
        exit_codes.append([worker.process.returncode for worker in workers])
        if failed is None:
            return JobResult(attempts=attempt + 1, exit_codes=exit_codes, job_dir=job_dir)
        message = (f"worker {failed.index} exited with code {failed.process.returncode} "
                   f"(attempt {attempt}); its last lines:\n  " + "\n  ".join(failed.tail))
        if attempt < runtime.worker_restarts:
            if sink is not None:
                sink.write(f"{message}\nrestarting all {runtime.num_workers} workers; they "
                           "resume from the last epoch's backup\n")
            continue
        raise MultiWorkerError(
            f"{message}\n(no restarts left: runtime.worker_restarts={runtime.worker_restarts};"
            f" full logs in {job_dir})")
    raise AssertionError("unreachable")  # pragma: no cover


def run_worker(fn_args: Any, experiment: config_lib.ExperimentConfig) -> Dict[str, Any]:
    """One worker: creates MultiWorkerMirroredStrategy first, then trains under it.

    Args:
      fn_args: the Trainer's inputs and outputs (JobFnArgs).
      experiment: the experiment, parsed once by the caller (it trains with it as
        trainer.train does, the Tuner's values in fn_args.hyperparameters applied).

    Returns this worker's task ({'type', 'index', 'chief'}).
    """
    tf_config = distribute.read_tf_config()
    strategy = distribute.create_strategy(dataclasses.replace(
        experiment.runtime, strategy=config_lib.StrategyName.MULTI_WORKER_MIRRORED))
    from tfprod.pipeline import trainer  # after the strategy: it must come before any TF op

    chief = distribute.is_chief(tf_config)
    print(f"task {tf_config['task']} of {strategy.num_replicas_in_sync} replicas "
          f"({'chief' if chief else 'worker'})", flush=True)
    distribute.use_strategy(strategy)
    trainer.train(fn_args, experiment)
    return distribute.strategy_task(strategy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfprod.pipeline.multiworker",
                                     description="One worker of a local multi-worker job.")
    parser.add_argument("--job", required=True, help="job.json written by run_local_job")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with open(args.job, encoding="utf-8") as handle:
        job = JobFnArgs(**json.load(handle))
    try:
        distribute.read_tf_config()
    except distribute.DistributeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tfprod.pipeline import trainer

    # job.json holds the Trainer's custom_config as TFX gave it: parsed once, here.
    run_worker(job, trainer.experiment_from_custom_config(job.custom_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
