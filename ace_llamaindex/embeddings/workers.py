"""Encode with several processes: sentence-transformers' multi-process pool, one process per GPU, or CPU processes
when there is no GPU (``--workers N`` of ``ace rollout``, ``ace index``, ``ace mine`` and ``ace eval``).

``with encoding_workers(2): ...`` makes every document or query batch encoded inside it by a sentence-transformers
model (:class:`~ace_llamaindex.embeddings.encoding.CachedEncoder`,
:class:`~ace_llamaindex.serve.embedding.FineTunedEmbedding`) go through a pool of that many processes, started on the
model's first batch and stopped when the block ends. Each CPU process gets its share of the cores (``OMP_NUM_THREADS``),
so two processes on two cores do not fight over them. A process started here also ends when the process that started
it dies (``kill -9`` included), instead of waiting on its queue forever. One process (``workers=1``, the default)
changes nothing: the model encodes in this process, as before.

What is not pooled: a batch smaller than :data:`MIN_POOLED` texts per worker (a query: the round trip costs more than it
saves), and a model served through an ONNX/OpenVINO export (its runtime is not picklable into another process, and
uses every core of this one already; said once in the log).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import OptionError

log = logging.getLogger(__name__)
MIN_POOLED = 4  # texts per worker below which a batch is encoded in this process
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker_devices(workers: int) -> list[str]:
    """The device of each worker process: one GPU each (``cuda:0`` ...) where CUDA is available, else the CPU.
    A number of workers this machine cannot give each its own GPU (or CPU core) is one clear error."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OptionError(f"workers must be a whole number of at least 1, got {workers!r}")
    if workers == 1:
        return []
    import torch

    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if workers > gpus:
            raise OptionError(f"workers={workers}: this machine has {gpus} GPU(s) and each worker process takes one "
                              f"(at most {gpus})")
        return [f"cuda:{i}" for i in range(workers)]
    cores = os.cpu_count() or 1
    if workers > cores:
        raise OptionError(f"workers={workers}: this machine has no GPU and {cores} CPU core(s); each worker process "
                          f"takes at least one (at most {cores})")
    return ["cpu"] * workers


class _Workers:
    """The pools of one ``encoding_workers`` block: one per model, started on first use, stopped at the end."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices
        self.pools: dict[int, tuple[Any, dict[str, Any], Any]] = {}  # id(model) -> (model, pool, its device before)
        self.lock = threading.Lock()  # one batch at a time through a pool (its queues are shared)
        self.started_seconds = 0.0  # time spent starting pools (they import torch: seconds each)
        self._refused: set[int] = set()

    def pool_for(self, model) -> dict[str, Any] | None:
        key = id(model)
        if key in self.pools:
            return self.pools[key][1]
        if key in self._refused:
            return None
        backend = getattr(model, "ace_backend", "torch")
        if backend != "torch":
            self._refused.add(key)
            log.warning("workers: the model serves its %s export, which runs in this process only (its runtime uses "
                        "every core already); encoding in one process", backend)
            return None
        started = time.perf_counter()
        device = getattr(model, "device", None)
        pool = start_pool(model, self.devices)
        self.started_seconds += time.perf_counter() - started
        self.pools[key] = (model, pool, device)
        return pool

    def close(self) -> None:
        for model, pool, device in self.pools.values():
            with contextlib.suppress(Exception):
                stop_pool(pool)
            if device is not None and str(device) != "cpu":  # starting the pool moved the model to the CPU
                with contextlib.suppress(Exception):
                    model.to(device)
        self.pools.clear()


_active: ContextVar[_Workers | None] = ContextVar("ace_encoding_workers", default=None)


@contextlib.contextmanager
def encoding_workers(workers: int = 1) -> Iterator[_Workers | None]:
    """Encode with ``workers`` processes inside the block (see the module doc); ``1``: in this process. Yields the
    block's state (``started_seconds``: time spent starting pools), or None for one process."""
    devices = worker_devices(workers)
    state = _Workers(devices) if devices else None
    token = _active.set(state)
    try:
        yield state
    finally:
        _active.reset(token)
        if state is not None:
            state.close()


def active_workers() -> int:
    """How many processes encode here now (1 outside an ``encoding_workers`` block)."""
    state = _active.get()
    return len(state.devices) if state is not None else 1


def pooled(model, encode: Callable[..., Any]) -> Callable[..., Any]:
    """``encode`` (``model.encode_document``, ``model.encode_query``, ``model.encode``), sent through the block's pool
    for ``model`` when one is active and the batch is large enough; else ``encode`` itself."""
    state = _active.get()
    if state is None:
        return encode

    def run(texts, *args: Any, **kwargs: Any):
        n = len(texts)
        workers = len(state.devices)
        if n < MIN_POOLED * workers:
            return encode(texts, *args, **kwargs)
        with state.lock:
            pool = state.pool_for(model)
            if pool is None:
                return encode(texts, *args, **kwargs)
            # a chunk per worker for a batch (each encodes its share in one pass), ~10 per worker for a long list (a
            # progress bar that moves, and workers that finish together)
            chunk = max(math.ceil(n / (10 * workers)), min(math.ceil(n / workers), int(kwargs.get("batch_size") or 32)))
            return encode(texts, *args, pool=pool, chunk_size=chunk, **kwargs)

    return run


# ---- the pool: sentence-transformers' own queues and worker loop, started so that a worker dies with its parent ----
def start_pool(model, devices: list[str]) -> dict[str, Any]:
    """A pool as ``model.start_multi_process_pool(devices)`` makes it (``{"input", "output", "processes"}``, for
    ``encode(..., pool=)``), whose processes also exit when this process dies, and whose CPU processes share the
    cores out. Falls back to sentence-transformers' own start where its worker loop is not where this expects it."""
    worker = _worker_loop(model)
    threads = str(max(1, (os.cpu_count() or 1) // len(devices)))
    saved = {name: os.environ.get(name) for name in _THREAD_VARS}
    if all(d == "cpu" for d in devices):
        os.environ.update(dict.fromkeys(_THREAD_VARS, threads))  # read by torch as each spawned process starts
    try:
        if worker is None:
            return model.start_multi_process_pool(devices)
        import torch.multiprocessing as mp

        model.to("cpu")
        model.share_memory()
        ctx = mp.get_context("spawn")
        pool: dict[str, Any] = {"input": ctx.Queue(), "output": ctx.Queue(), "processes": []}
        try:
            for device in devices:
                process = ctx.Process(target=_worker, args=(worker, device, model, pool["input"], pool["output"],
                                                            os.getpid()), daemon=True)
                process.start()
                pool["processes"].append(process)
        except BaseException:
            stop_pool(pool)
            raise
        log.info("workers: %d encoding processes on %s", len(devices), ", ".join(devices))
        return pool
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stop_pool(pool: dict[str, Any]) -> None:
    """Stop the pool's processes and release its queues."""
    for process in pool["processes"]:
        process.terminate()
    for process in pool["processes"]:
        process.join()
        process.close()
    for name in ("input", "output"):
        queue = pool[name]
        queue.cancel_join_thread()
        queue.close()


def _worker_loop(model) -> Callable[..., Any] | None:
    """sentence-transformers' worker loop (``(device, model, input_queue, output_queue)``) for this model's class."""
    for name in ("_multi_process_worker", "_encode_multi_process_worker"):
        loop = getattr(type(model), name, None)
        if callable(loop):
            return loop
    return None


def _worker(loop: Callable[..., Any], device: str, model, inputs, outputs, parent: int) -> None:
    """A worker process: exit when ``parent`` is gone (its queues would never be written again), else run ``loop``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="ace-parent-watch").start()
    from tqdm.std import tqdm

    # a thread lock for tqdm (its default creates a process semaphore, which a terminated worker never releases: the
    # resource tracker would warn of it at exit)
    tqdm.set_lock(threading.RLock())
    loop(device, model, inputs, outputs)
