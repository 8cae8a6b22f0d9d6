"""An asyncio event loop on a thread of its own, with a thread pool for blocking work.

Both APIs run on one: the gRPC server (grpc.aio) and the REST server each get their own loop, so a
slow handler of one protocol never delays the other's.
"""

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine


class EventLoopThread:
    """Starts the loop at once; `run()` runs a coroutine on it from another thread, `close()` stops it.

    Args:
        name: names the loop's thread (`<name>-loop`) and the pool's threads.
        max_threads: threads for blocking work; the loop's default executor, so
            `loop.run_in_executor(None, ...)` uses them too.
    """

    def __init__(self, name: str, max_threads: int):
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix=name)
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(self.executor)
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{name}-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine, timeout: float) -> Any:
        """Runs the coroutine on the loop and waits for its result (or exception) up to timeout seconds."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def close(self) -> None:
        """Stops the loop (what is still scheduled on it is dropped) and the thread pool."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
        self.executor.shutdown(wait=False)
