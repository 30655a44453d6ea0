"""Data-parallel training on several processes: ``torchrun``, ``accelerate launch`` or ``ace train --nproc N``.

Every process (rank) loads the same data, makes the same validation split and trains the full fine-tune together
with the others (DDP through sentence-transformers' trainer, the batch size per process): the no-duplicates sampler
draws global batches that the processes split among them, and MNRL gathers the in-batch negatives of every process
(``gather_across_devices``; see :func:`~ace_llamaindex.train.training.fine_tune`). Afterwards exactly one process,
rank 0, judges the candidates, trains what trains in one process (``--method auto``'s query adapters), and writes
the output folder; the others wait for it and write nothing (:func:`on_main`). What cannot run so is refused
(:func:`check_trainer`, :func:`start`) with one line, and what can be known before any process starts is refused by
the launcher (:func:`check_before_launch`: ``ace train --nproc`` starts no process for a run the processes would refuse).

The processes die with their launcher (:func:`die_with_launcher`): torchrun starts each in a session of its own, so
a ``kill -9`` of ``ace train --nproc`` (or of torchrun) reaches none of them; each asks the kernel for SIGKILL when its
parent dies (Linux's parent-death signal), and rank 0 checks that its launcher is still there before it swaps a
finished folder into place (:func:`check_launcher`), so a killed run leaves no model that looks complete.

The launcher's environment says where a process stands (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``); without it everything here is a no-op for one process. The backend follows the device:
NCCL on CUDA (one GPU per process), gloo on a CPU.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import Any, Callable

from ..errors import AceError, OptionError

log = logging.getLogger(__name__)
# Collectives during training (the default group): long enough for rank 0's evaluation of the base before the first
# step, which the others wait for.
TRAINING_TIMEOUT = timedelta(hours=2)
# Rank 0 alone judges and writes after training (minutes to hours on a large corpus, on a CPU): the others wait on a
# gloo group of their own with this timeout. A rank that dies ends the run sooner: the launcher stops the others.
WAIT_TIMEOUT = timedelta(days=7)
# The trainers that run data-parallel (the built-in full fine-tune and auto); a plugin opts in with this attribute.
ATTRIBUTE = "data_parallel"

# Set by launch() for the processes it starts: the launcher's process id, their parent (torchrun's agent runs in it).
LAUNCHER_ENV = "ACE_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # prctl(2)

_control = None  # the gloo group rank 0's results travel on
_launcher: int | None = None  # the parent this process must die with (a launcher's process), once known


class RankZeroFailed(AceError):
    """Rank 0 failed after training: the other ranks stop too, having written nothing."""


class LauncherGone(AceError):
    """The launcher that started this process is gone (killed): the process stops without writing."""


def _env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """How many processes train together (1 without a launcher)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, _env("WORLD_SIZE", 1))


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env("RANK", 0)


def local_rank() -> int:
    return _env("LOCAL_RANK", 0)


def local_world_size() -> int:
    """Processes on this machine (they share its CPU memory)."""
    return max(1, _env("LOCAL_WORLD_SIZE", world_size()))


def is_main() -> bool:
    """Whether this process is the one that judges and writes (rank 0; the only one without a launcher)."""
    return rank() == 0


def backend_for(device: str) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.startswith("cuda") else "gloo"


def check_trainer(trainer: Callable, name: str, processes: int | None = None) -> None:
    """Refuse a trainer that does not run data-parallel when ``processes`` (default: this run's world size) > 1."""
    processes = processes or world_size()
    if processes <= 1 or getattr(trainer, ATTRIBUTE, False):
        return
    if name == "adapter":
        raise OptionError(f"--method adapter trains in one process (a query adapter over frozen vectors takes seconds on "
                          f"a CPU), so it cannot use {processes} processes: run `ace train --method adapter` without "
                          "torchrun, accelerate launch or --nproc")
    raise OptionError(f"--method {name} does not train data-parallel, so it cannot use {processes} processes: run it in "
                      "one process, or use --method full or auto (a trainer plugin may declare data_parallel = True)")


def check_device(device: str, processes: int) -> None:
    """Refuse a device several processes cannot share: MPS (no DDP backend), fewer GPUs than processes."""
    if processes <= 1:
        return
    if device.startswith("mps"):
        raise OptionError(f"{processes} processes cannot train on MPS (DDP has no backend for it): use --device cpu, "
                          "or one process")
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        local = min(processes, local_world_size()) if world_size() > 1 else processes
        if gpus < local:
            raise OptionError(f"{local} processes on this machine need a GPU each and it has {gpus}: use --nproc {gpus} "
                              "(or fewer), or --device cpu")


def die_with_launcher() -> None:
    """Under a launcher: have this process killed (SIGKILL) when its parent, the launcher, dies, however it dies
    (``kill -9`` included), and stop now if it died already. Linux's parent-death signal (``prctl``); elsewhere only
    :func:`check_launcher` guards the writing. One process, or called again: nothing."""
    global _launcher
    if world_size() <= 1 or _launcher is not None:
        return
    _launcher = _env(LAUNCHER_ENV, 0) or os.getppid()
    from .. import atomic

    atomic.BEFORE_SWAP.append(check_launcher)
    _ask_to_die_with_parent()
    check_launcher()  # it may have died before the request: this process has been handed to another parent then


def _ask_to_die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        log.warning("rank %d: cannot ask to die with the launcher (prctl: errno %d)", rank(), ctypes.get_errno())


def check_launcher(writing: object = None) -> None:
    """Raise :class:`LauncherGone` when the launcher this process started under is no longer its parent (it died:
    the process was handed to init or a subreaper). Called before a finished folder is swapped in (``writing``)."""
    if _launcher is None or os.getppid() == _launcher:
        return
    doing = f"before writing {writing}" if writing is not None else "before training"
    raise LauncherGone(f"the launcher of rank {rank()} (process {_launcher}) is gone: rank {rank()} stops {doing}")


def check_global_batch(train_examples: int, batch_size: int, processes: int) -> None:
    """Several processes drop the last, incomplete global batch: the training split must hold one full global batch."""
    if processes > 1 and train_examples < batch_size * processes:
        raise OptionError(f"{train_examples} training examples cannot fill one batch of {batch_size} on each of "
                          f"{processes} processes ({batch_size * processes} in all): lower --batch-size or the number "
                          "of processes")


def check_before_launch(training_data: Any, config: Any, processes: int, method: str, champion: bool = False) -> None:
    """What the ``processes`` would refuse before training, refused by the launcher before it starts any: the
    training data file, the options (``config.validate``), too few examples, a global batch (``config.batch_size`` x
    processes, the full fine-tune's default batch where it is None) larger than the training split, ``--method auto``
    without validation queries. The split is the one every process makes (the same function, seed and seen share);
    with a champion (``champion``, read by rank 0 once the processes run) the training split holds at most every
    example, and the processes check the exact count again."""
    from ..mine.mining import load_training_data, training_metadata
    from .common import AUTO_NEEDS_VALIDATION, plan_validation
    from .training import full_defaults

    examples = load_training_data(training_data)
    config.validate()
    if not examples:
        raise OptionError("no training examples")
    full = full_defaults(config)
    if champion:
        n_train, n_val = len(examples), None
    else:
        measured = training_metadata(training_data).get("seen_share")  # as ace train's processes take it (loop.py)
        share = config.seen_share if config.seen_share is not None else \
            (measured or {}).get("value") if isinstance(measured, dict) else None
        split = plan_validation(examples, config.val_fraction, config.seed, float(share or 0.0))
        n_train, n_val = len(split.train), len(split.val)
        if n_train < 2:
            raise OptionError(f"only {n_train} training example(s) after the validation split; need at least 2")
        if method == "auto" and not n_val:
            raise OptionError(AUTO_NEEDS_VALIDATION)
    check_global_batch(n_train, full.batch_size, processes)


def start(device: str) -> str:
    """Join the other processes (one call per process, before training; later calls return at once) and return the
    device this process trains on (``cuda:LOCAL_RANK`` on GPUs). One process: ``device`` as is, nothing started."""
    global _control
    n = world_size()
    if n <= 1:
        return device
    die_with_launcher()
    check_device(device, n)
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(local_rank())
        device = f"cuda:{local_rank()}"
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=TRAINING_TIMEOUT)
        import atexit

        atexit.register(_stop)
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        log.info("rank %d of %d (%s, %s)", rank(), n, device, dist.get_backend())
    return device


def _stop() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _started() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def on_main(fn: Callable[[], Any], what: str, shared: Callable[[Any], Any] | None = None) -> Any:
    """Run ``fn`` on rank 0 alone; the other ranks wait for it and return ``shared(result)`` (default: the result
    itself), which must pickle. When rank 0 fails, the others raise :class:`RankZeroFailed`. One process: ``fn()``."""
    if not _started():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            _broadcast((False, f"{type(exc).__name__}: {exc}"))
            raise
        _broadcast((True, shared(result) if shared else result))
        return result
    log.info("rank %d: waiting while rank 0 is %s", rank(), what)
    ok, value = _broadcast(None)
    if not ok:
        raise RankZeroFailed(f"rank 0 failed while {what} ({value}); rank {rank()} wrote nothing")
    return value


def barrier() -> None:
    """Wait for every process (a no-op for one)."""
    if _started():
        import torch.distributed as dist

        dist.barrier(group=_control)


def same_everywhere(value: Any, what: str) -> None:
    """Refuse to train when the processes disagree on ``value`` (they would train on different data)."""
    if not _started():
        return
    import torch.distributed as dist

    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value, group=_control)
    if len(set(map(repr, values))) > 1:
        raise OptionError(f"the {len(values)} processes disagree on {what} (rank by rank: {values}); every process must "
                          "read the same files and options")


def note(per_device_batch: int, gathered: bool) -> dict[str, Any] | None:
    """What the card records about a data-parallel run (None for one process)."""
    if not _started():
        return None
    import torch.distributed as dist

    n = world_size()
    return {"world_size": n, "backend": dist.get_backend(), "per_device_batch_size": per_device_batch,
            "global_batch_size": per_device_batch * n, "gather_across_devices": gathered, "written_by": "rank 0"}


def launch_arguments(nproc: int, module_args: list[str]) -> list[str]:
    """torchrun's arguments for ``ace ARGS`` on ``nproc`` processes of this machine (a free port: ``--standalone``)."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "ace_llamaindex.cli", *module_args]


def launch(nproc: int, module_args: list[str]) -> int:
    """Run ``ace ARGS`` on ``nproc`` processes with torch's own launcher (``torch.distributed.run``, torchrun) and
    wait; returns the exit status: 0, the first failed process's (it stops the others), or 128 + a signal that
    ended the run (SIGTERM, Ctrl-C: torchrun stops its processes first; SIGKILL: each process dies with this one,
    :func:`die_with_launcher`). On a CPU each process gets its share of the cores (``OMP_NUM_THREADS``, unless set)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # torchrun's agent runs here: this process is the workers' parent
    try:
        run(get_args_parser().parse_args(launch_arguments(nproc, module_args)))
    except ChildFailedError as exc:
        first = min(exc.failures.values(), key=lambda f: f.timestamp)
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0
