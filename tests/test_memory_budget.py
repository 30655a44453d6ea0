"""Issue #40: training fits a memory budget (``--max-memory``), says what it chose, and judges candidates holding one
model at a time. Cheap: no training here (benchmarks/bench_memory.py measures the peaks)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ace_llamaindex.cli import cli
from ace_llamaindex.data.loading import DEMO_DATASET
from ace_llamaindex.embeddings.encoding import CachedEncoder
from ace_llamaindex.embeddings.models import open_model
from ace_llamaindex.mine.mining import TrainingExample
from ace_llamaindex.train import training
from ace_llamaindex.train.common import TrainConfig
from ace_llamaindex.train.training import describe_plan, full_defaults, plan_memory

GB = 1e9


@pytest.fixture(scope="module")
def model():
    return open_model(None, device="cpu")


def _rows(words: int) -> list[TrainingExample]:
    return [TrainingExample(f"query {i}", " ".join(["word"] * words), []) for i in range(40)]


# (max_memory, ACE_TRAIN_MEMORY_GB, free GB, document words, held GB) -> (source, limit GB, cached, mini-batch range)
PLANS = [
    pytest.param(None, None, 64, 50, 0.6, "default", 2.0, True, (32, 32), id="default-2GB-short-texts-cached-one-chunk"),
    pytest.param(None, None, 64, 300, 0.6, "default", 2.0, True, (4, 8), id="default-2GB-abstracts-small-mini-batch"),
    pytest.param(8.0, None, 64, 50, 0.6, "--max-memory", 8.0, False, None, id="roomy-budget-plain-loss"),
    pytest.param(1.2, None, 64, 300, 0.6, "--max-memory", 1.2, True, (1, 1), id="tight-budget-mini-batch-1"),
    pytest.param(2.0, None, 64, 300, 1.4, "--max-memory", 2.0, True, (1, 1), id="what-the-process-holds-counts"),
    pytest.param(None, None, 1.5, 300, 0.6, "80% of the free memory", 1.2, True, (1, 1), id="less-free-than-2GB"),
    # the default budget spent already by the process (an in-process caller): the step a fresh process would get
    pytest.param(None, None, 64, 300, 1.9, "default", 2.0, True, (3, 8), id="default-spent-already-fresh-process-step"),
    pytest.param(None, None, 64, 50, 3.5, "default", 2.0, True, (32, 32), id="default-spent-already-short-texts"),
    pytest.param(None, 6, 64, 8, 0.6, "ACE_TRAIN_MEMORY_GB (activations)", None, False, None, id="env-budget-kept"),
    pytest.param(4.0, 6, 64, 300, 0.6, "--max-memory", 4.0, True, (12, 20), id="max-memory-wins-over-env"),
]


@pytest.mark.parametrize("max_memory,env_gb,free_gb,words,held_gb,source,limit_gb,cached,mini", PLANS)
def test_the_loss_and_mini_batch_fit_the_process_budget(monkeypatch, model, max_memory, env_gb, free_gb, words,
                                                        held_gb, source, limit_gb, cached, mini):
    monkeypatch.setattr(training, "_resident_bytes", lambda: int(held_gb * GB))
    monkeypatch.setattr(training, "_free_bytes", lambda: int(free_gb * GB))
    if env_gb is None:
        monkeypatch.delenv("ACE_TRAIN_MEMORY_GB", raising=False)
    else:
        monkeypatch.setenv("ACE_TRAIN_MEMORY_GB", str(env_gb))
    config = full_defaults(TrainConfig(max_memory=max_memory))
    plan = plan_memory(model, _rows(words), config, 5, "cpu")
    assert plan["source"] == source and plan["max_memory_gb"] == limit_gb
    assert plan["cached"] is cached, plan
    if cached:
        assert mini[0] <= plan["mini_batch_size"] <= mini[1], plan
    if limit_gb is not None:  # what is left for a step: the budget less what is held, the optimizer state, headroom
        held = min(held_gb, training.FRESH_PROCESS_GB) if source == "default" else held_gb
        left = limit_gb - held - plan["optimizer_gb"] - training.HEADROOM_GB
        assert plan["budget_gb"] == pytest.approx(max(0.0, left), abs=0.011)
        assert plan["fits"] is (plan["estimated_step_gb"] <= plan["budget_gb"] + 0.005)
    line = describe_plan(plan)
    assert source in line and ("CachedMNRL, mini-batch" in line) is cached and "\n" not in line
    assert ("exceeds the budget" in line) is (not plan["fits"])


# What the default budget counts of what the process holds: an in-process caller (a notebook, a test run) at most
# what a fresh `ace train` process holds, so a full process still trains at a useful mini-batch; `ace train` itself,
# a process that only trains, everything (on SciFact it held 0.88 GB, more than the 0.75 floor).
@pytest.mark.parametrize("dedicated,held_gb,counted_gb", [
    pytest.param(False, 0.88, training.FRESH_PROCESS_GB, id="in-process-caller-counts-at-most-a-fresh-process"),
    pytest.param(False, 0.6, 0.6, id="in-process-caller-below-the-floor-counts-what-it-holds"),
    pytest.param(True, 0.88, 0.88, id="a-dedicated-process-counts-all-it-holds"),
    pytest.param(True, 1.9, 1.9, id="a-dedicated-process-that-holds-the-budget-has-no-step-left"),
])
def test_what_the_default_budget_counts_of_the_process(monkeypatch, model, dedicated, held_gb, counted_gb):
    import contextlib

    monkeypatch.setattr(training, "_resident_bytes", lambda: int(held_gb * GB))
    monkeypatch.setattr(training, "_free_bytes", lambda: int(64 * GB))
    monkeypatch.delenv("ACE_TRAIN_MEMORY_GB", raising=False)
    with training.dedicated_process() if dedicated else contextlib.nullcontext():
        plan = plan_memory(model, _rows(300), full_defaults(TrainConfig()), 5, "cpu")
    left = 2.0 - counted_gb - plan["optimizer_gb"] - training.HEADROOM_GB
    assert plan["source"] == "default" and plan["budget_gb"] == pytest.approx(max(0.0, left), abs=0.011), plan
    assert training._DEDICATED is False  # let go on leaving: a later in-process caller is not a dedicated process


@pytest.mark.parametrize("own_process,dedicated", [
    pytest.param(True, True, id="the-ace-command-in-its-own-process-counts-all-it-holds"),
    pytest.param(False, False, id="ace-train-called-in-process-counts-at-most-a-fresh-process"),
])
def test_ace_train_plans_as_a_dedicated_process_only_in_its_own(monkeypatch, tmp_path, own_process, dedicated):
    from ace_llamaindex import cli as cli_module
    from ace_llamaindex import loop
    from ace_llamaindex.errors import OptionError

    seen = []

    def train_model(*args, **kwargs):
        seen.append(training._DEDICATED)
        raise OptionError("stopped here by the test")

    monkeypatch.setattr(loop, "train_model", train_model)
    monkeypatch.setattr(cli_module, "_OWN_PROCESS", own_process)  # what main(), the `ace` command, sets
    result = CliRunner().invoke(cli, ["train", str(DEMO_DATASET), "-o", str(tmp_path / "out")])
    assert "stopped here by the test" in result.output and seen == [dedicated], result.output
    assert training._DEDICATED is False


# A (mini-)batch is padded to its longest text: CoSQA's documents are 158 tokens at the 95th percentile, but 1% reach
# 256, and a plan sized by the percentile (mini-batch 18) peaked at 3.6 GB (benchmarks/results/memory-cosqa.json).
@pytest.mark.parametrize("long_every,longest", [
    pytest.param(None, 22, id="short-texts-short-plan"),
    pytest.param(100, 256, id="one-long-negative-in-a-hundred-sizes-the-mini-batch"),
])
def test_the_plan_is_sized_by_the_longest_text(monkeypatch, model, long_every, longest):
    monkeypatch.setattr(training, "_resident_bytes", lambda: int(0.8 * GB))
    monkeypatch.setattr(training, "_free_bytes", lambda: int(64 * GB))
    monkeypatch.delenv("ACE_TRAIN_MEMORY_GB", raising=False)
    short, long = " ".join(["word"] * 20), " ".join(["word"] * 300)
    rows = [TrainingExample(f"query {i}", short, [short] * 4 + [long if long_every and i % long_every == 7 else short])
            for i in range(300)]
    plan = plan_memory(model, rows, full_defaults(TrainConfig(cached_loss=True)), 5, "cpu")
    assert plan["longest_tokens"]["document"] == longest, plan
    per_sequence = plan["estimated_step_gb"] / plan["mini_batch_size"]
    assert plan["mini_batch_size"] == min(32, int(plan["budget_gb"] // per_sequence)) or plan["mini_batch_size"] == 32
    assert plan["estimated_step_gb"] <= plan["budget_gb"] + 0.01, plan


# What a CachedMNRL step rose above what the process held and the optimizer state, at the most over its runs, on
# 256-token SciFact abstracts (benchmarks/results/step-rise-scifact.json: fp32, each mini-batch twice; the bf16 row
# from train-speed-memory-scifact.json, a CPU with native bf16). The plan must have budgeted at least that much.
@pytest.mark.parametrize("mini,precision,rose_gb", [
    pytest.param(2, "fp32", 0.507, id="fp32-mini-batch-2"),
    pytest.param(4, "fp32", 0.781, id="fp32-mini-batch-4"),
    pytest.param(8, "fp32", 1.51, id="fp32-mini-batch-8-the-heap-keeps-the-most"),
    pytest.param(16, "fp32", 1.732, id="fp32-mini-batch-16"),
    pytest.param(8, "bf16", 1.47, id="bf16-mini-batch-8"),
])
def test_the_plan_budgets_what_a_measured_step_rose(monkeypatch, model, mini, precision, rose_gb):
    monkeypatch.setattr(training, "_resident_bytes", lambda: int(0.65 * GB))
    config = full_defaults(TrainConfig(cached_loss=True, mini_batch_size=mini, precision=precision, max_memory=64))
    plan = plan_memory(model, _rows(300), config, 5, "cpu")
    assert plan["longest_tokens"]["document"] == 256 and plan["mini_batch_size"] == mini
    assert plan["estimated_step_gb"] + training.HEADROOM_GB >= rose_gb, plan


# The same, measured here for real: a CPU fine-tune on 256-token texts with the mini-batch at which glibc's heap kept the
# most, its peak (VmHWM) against what its plan counted (held + optimizer state + estimated step + headroom).
_STEP = """
import json, pathlib, sys
from ace_llamaindex.data.examples import TrainingExample
from ace_llamaindex.train import training
words = [f"term{i}" for i in range(997)]
text = lambda k: " ".join(words[(k * 31 + j) % 997] for j in range(300))  # far past the model's 256 tokens
rows = [TrainingExample(f"question {i} on {words[i]}", text(i), [text(100 + 5 * i + j) for j in range(5)]) for i in range(8)]
config = training.full_defaults(training.TrainConfig(epochs=1, batch_size=8, val_fraction=0.0, precision="fp32",
                                                     device="cpu", cached_loss=True, mini_batch_size=8,
                                                     extra={"max_steps": 2}))
tuned = training.fine_tune(training.plan_validation(rows, 0.0, 1), config, pathlib.Path(sys.argv[1]), "f")
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_gb": hwm * 1024 / 1e9, "plan": tuned.info["memory_plan"]}))
"""


def test_a_cpu_step_on_long_texts_stays_within_what_its_plan_counted(tmp_path):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _STEP, str(tmp_path / "c")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    plan = result["plan"]
    assert plan["longest_tokens"]["document"] == 256 and plan["mini_batch_size"] == 8, plan
    counted = plan["resident_gb"] + plan["optimizer_gb"] + plan["estimated_step_gb"] + training.HEADROOM_GB
    assert result["peak_gb"] <= counted, f"peak {result['peak_gb']:.2f} GB, the plan counted {counted:.2f} GB: {plan}"


def test_a_plan_that_cannot_fit_says_so_in_its_line(monkeypatch, model):
    monkeypatch.setattr(training, "_resident_bytes", lambda: int(1.9 * GB))
    plan = plan_memory(model, _rows(300), full_defaults(TrainConfig(max_memory=2.0)), 5, "cpu")
    assert plan["budget_gb"] == 0 and plan["mini_batch_size"] == 1 and plan["fits"] is False
    assert "exceeds the budget" in describe_plan(plan) and "--max-memory" in describe_plan(plan)


@pytest.mark.parametrize("value,expected", [
    pytest.param("0", "0.0 is not in the range x>0", id="zero"),
    pytest.param("-1", "-1.0 is not in the range x>0", id="negative"),
    pytest.param("nan", "'nan' is not a finite number", id="nan"),
    pytest.param("lots", "'lots' is not a valid finite float", id="not-a-number"),
])
def test_a_bad_max_memory_is_one_line_naming_the_option(value, expected):
    result = CliRunner().invoke(cli, ["train", str(DEMO_DATASET), "--max-memory", value])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and "--max-memory" in error[0] and expected in error[0], result.output
    assert "Traceback" not in result.output


def test_a_factory_encoder_holds_its_vectors_not_its_model(model):
    builds = []

    def build():
        builds.append(1)
        return model

    lazy = CachedEncoder.from_factory(build, label="lazy")
    held = CachedEncoder.from_model(model, label="held")
    docs, queries = ["alpha beta", "gamma delta"], ["what is alpha"]
    first = lazy.encode_documents(docs)
    assert len(builds) == 1 and lazy._model is None  # built for the call, let go after it
    assert (lazy.encode_documents(docs) == first).all() and len(builds) == 1  # cached: no model needed
    assert lazy.encode_queries(queries).shape == (1, 384) and len(builds) == 2 and lazy._model is None
    assert first == pytest.approx(held.encode_documents(docs), abs=1e-6)


# ---- freed activations go back to the system (glibc's mmap threshold fixed; issue #40) ------------------------------
# A block served from its own memory map is unmapped when freed; one served from the heap stays as a fragment. glibc
# counts the mapped blocks (mallinfo2().hblks), which makes the allocator's choice visible without timing or RSS noise.

_MAPPED = """
import ctypes, sys, pathlib, torch
from ace_llamaindex.train import training
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "set":
    assert training.return_freed_memory("cpu")
elif sys.argv[1].startswith("fine-tune"):  # the product's path: a one-step CPU fine-tune within --max-memory GB
    from ace_llamaindex.data.examples import TrainingExample
    rows = [TrainingExample(f"query {i}", f"memory {i} about topic {i}", []) for i in range(4)]
    config = training.full_defaults(training.TrainConfig(epochs=1, batch_size=2, val_fraction=0.0, precision="fp32",
                                                         device="cpu", max_memory=float(sys.argv[1].split(":")[1]),
                                                         extra={"max_steps": 1}))
    training.fine_tune(training.plan_validation(rows, 0.0, 1), config, pathlib.Path(sys.argv[2]), "f")
before = libc.mallinfo2().hblks
blocks = [torch.ones(24_000) for _ in range(100)]   # 100 tensors of 96 KiB: below glibc's default threshold (128 KiB
print(libc.mallinfo2().hblks - before)              # and up), above the fixed one (64 KiB)
"""


@pytest.mark.parametrize("how,mapped", [
    pytest.param("nothing", (0, 10), id="glibc-default-serves-them-from-the-heap"),  # the data exercises the claim
    pytest.param("set", (80, 100), id="fixed-threshold-maps-them"),
    # a budget no step fits (less than the process holds): memory before speed, freed blocks go back
    pytest.param("fine-tune:0.1", (80, 100), id="a-fine-tune-no-step-fits-sets-it"),
    # a step that fits: the heap as it is (mapping every block made training about half as fast)
    pytest.param("fine-tune:64", (0, 10), id="a-fine-tune-that-fits-leaves-it"),
])
def test_large_blocks_get_their_own_maps_which_go_back_when_freed(tmp_path, how, mapped):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MAPPED, how, str(tmp_path / "c")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count = int(out.stdout.strip().splitlines()[-1])
    assert mapped[0] <= count <= mapped[1], f"{how}: {count} of 100 blocks of 96 KiB mapped"


def test_only_a_cpu_process_changes_its_allocator():
    assert training.return_freed_memory("cuda:0") is False and training.return_freed_memory("mps") is False


# ---- what a CPU step leaves behind is bounded: oneDNN's primitive cache, the heap (train/allocator.py; issue #40) -----
# oneDNN says for every primitive it creates whether its cache served it (ONEDNN_VERBOSE=2: create:cache_hit/miss).
# bf16 matmuls go through oneDNN only on CPUs with native bf16 (AVX-512/AMX), so that every CPU exercises the cache
# each training step also runs three fp32 convolutions (oneDNN on any x86 CPU) of the same shapes, step after step.
# With the product's bound patched to 0, a bound set before the first step leaves no hit at all; a bound set too late
# (after oneDNN's first primitive) or not at all leaves the default 1024 and hits from the second step on.

_PRIMITIVES = """
import pathlib, sys
import torch
import transformers
from ace_llamaindex.data.examples import TrainingExample
from ace_llamaindex.train import allocator, training
allocator.PRIMITIVE_CACHE_CAPACITY = 0
step = transformers.Trainer.training_step
def training_step(self, *args, **kwargs):  # oneDNN work inside every step, whatever the CPU
    for side in (32, 33, 34):
        torch.nn.functional.conv2d(torch.ones(2, 8, side, side), torch.ones(8, 8, 3, 3))
    return step(self, *args, **kwargs)
transformers.Trainer.training_step = training_step
rows = [TrainingExample(f"query {i}", f"memory {i} about topic {i}", []) for i in range(8)]
config = training.full_defaults(training.TrainConfig(epochs=1, batch_size=2, val_fraction=0.0, precision="bf16",
                                                     device="cpu", extra={"max_steps": 3}))
training.fine_tune(training.plan_validation(rows, 0.0, 1), config, pathlib.Path(sys.argv[1]), "f")
"""


@pytest.mark.parametrize("user_value,hits", [
    pytest.param(None, False, id="the-bound-is-in-effect-from-the-first-step"),
    pytest.param("1024", True, id="the-users-own-value-wins"),  # and shows the data exercises the cache
])
def test_onednn_keeps_no_more_primitives_than_the_bound(tmp_path, user_value, hits):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["ONEDNN_VERBOSE"] = "2"
    if user_value:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = user_value
    out = subprocess.run([sys.executable, "-c", _PRIMITIVES, str(tmp_path / "c")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert log.count("create:cache_miss") >= 3, "no oneDNN primitive was created: the run did not exercise oneDNN"
    assert (log.count("create:cache_hit") > 0) is hits, f"{log.count('create:cache_hit')} primitives from the cache"


def test_the_heap_is_trimmed_after_every_optimizer_step(tmp_path, monkeypatch):
    from ace_llamaindex.data.examples import TrainingExample
    from ace_llamaindex.train import allocator

    trims = []
    monkeypatch.setattr(allocator, "trim_heap", lambda: trims.append(1) or True)
    rows = [TrainingExample(f"query {i}", f"memory {i} about topic {i}", []) for i in range(12)]
    config = training.full_defaults(training.TrainConfig(epochs=1, batch_size=4, val_fraction=0.0, precision="fp32",
                                                         device="cpu"))
    tuned = training.fine_tune(training.plan_validation(rows, 0.0, 1), config, tmp_path / "c", "f")
    assert tuned.info["optimizer_steps"] == 3 and len(trims) == 3


# ---- an encoding batch holds about ENCODE_TOKENS tokens: long documents go fewer at a time (issue #40) ---------------
# SciFact's 256-token abstracts in batches of 64 added 0.55 GB while encoding (benchmarks/results/encode-memory-*.json).

class _NoTokenizer:
    max_seq_length = 512

    def tokenizer(self, *args, **kwargs):
        raise TypeError("not a text tokenizer")


@pytest.mark.parametrize("words,batch", [
    pytest.param(2, 64, id="short-texts-the-most-per-batch"),
    pytest.param(100, 64, id="100-token-texts-still-the-most"),
    pytest.param(300, 32, id="256-token-texts-half-as-many"),  # truncated at the model's 256
    pytest.param(None, 16, id="no-text-tokenizer-assumes-its-longest-512"),
    pytest.param("mixed", 32, id="one-long-text-in-a-hundred-sizes-the-batch"),  # sorted: the longest go first
])
def test_an_encoding_batch_holds_a_bounded_number_of_tokens(model, words, batch):
    from ace_llamaindex.embeddings.encoding import encode_batch_size

    if words is None:
        assert encode_batch_size(_NoTokenizer(), ["anything"] * 10) == batch
    elif words == "mixed":
        assert encode_batch_size(model, [" ".join(["word"] * (300 if i % 100 == 7 else 20)) for i in range(300)]) == batch
    else:
        assert encode_batch_size(model, [" ".join(["word"] * words)] * 300) == batch


@pytest.mark.parametrize("given,words,used", [
    pytest.param(None, 300, 32, id="default-long-texts-fewer-at-a-time"),
    pytest.param(None, 2, 64, id="default-short-texts"),
    pytest.param(8, 300, 8, id="an-explicit-batch-size-wins"),
])
def test_the_encoder_encodes_in_batches_of_that_size(monkeypatch, model, given, words, used):
    from ace_llamaindex.embeddings import encoding

    sizes = []

    def spy(model, encode):
        def run(texts, **kwargs):
            sizes.append(kwargs["batch_size"])
            return encode(texts, **kwargs)
        return run

    monkeypatch.setattr(encoding, "pooled", spy)
    encoder = CachedEncoder.from_model(model, label="spied", batch_size=given)
    encoder.encode_documents([f"{i} " + " ".join(["word"] * words) for i in range(3)])
    assert sizes == [used]


def test_the_ace_command_marks_its_process_as_its_own(monkeypatch):
    import signal
    import sys

    from ace_llamaindex import cli as cli_module

    monkeypatch.setattr(cli_module, "_OWN_PROCESS", False)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # main()'s SIGTERM handler stays out of the test process
    monkeypatch.setattr(sys, "argv", ["ace", "--version"])
    with pytest.raises(SystemExit):
        cli_module.main()
    assert cli_module._OWN_PROCESS is True
