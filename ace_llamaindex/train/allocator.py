"""What a CPU training step leaves behind in the process, bounded (issue #40: training within 2 GB).

Two caches outside the model grow with every step of a CPU fine-tune and are not needed from one step to the next:

- **oneDNN's primitive cache.** bf16 matmuls on a CPU with native bf16 (AVX-512, AMX) run through oneDNN, which
  compiles a primitive per shape and keeps up to 1024 of them. With dynamic padding nearly every mini-batch brings
  new shapes, so the cache grows through the run while a step reuses only its own. :func:`bound_primitive_cache` sets
  ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` unless the user has; oneDNN reads it once, at its first primitive, so it is set
  before training starts (fp32 inference does not go through oneDNN here: a process that trains after encoding is
  still in time).
- **Freed activations in glibc's heap.** :class:`TrimHeapEachStep` returns the heap's free pages to the system after
  every optimizer step (``malloc_trim``: milliseconds against seconds per step), so what one step freed does not
  stay resident through the next.

What each saves and costs, measured: docs, Training memory (``benchmarks/bench_step_memory.py``).
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

from ..embeddings.encoding import trim_heap

PRIMITIVE_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
PRIMITIVE_CACHE_CAPACITY = 8  # a step's own shapes repeat across layers; earlier steps' shapes are not kept


def bound_primitive_cache() -> str:
    """Bound oneDNN's primitive cache to :data:`PRIMITIVE_CACHE_CAPACITY` unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``
    is set already (the user's value wins); returns the capacity in effect for a oneDNN not yet started."""
    return os.environ.setdefault(PRIMITIVE_CACHE_ENV, str(PRIMITIVE_CACHE_CAPACITY))


class TrimHeapEachStep(TrainerCallback):
    """A transformers callback: :func:`~ace_llamaindex.embeddings.encoding.trim_heap` after every optimizer step."""

    def on_step_end(self, args, state, control, **kwargs):
        trim_heap()
