"""``ace``: a thin shell over the Python API. Every command's work lives in a library module."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_endpoint import endpoint_options
from .cli_fields import AceGroup, FiniteFloat, field_options, from_options, generated_options, short_number
from .errors import AceError, OptionError
from .serve.feedback import QUERY_ID

EXPORTS = ["onnx", "onnx-int8", "openvino", "openvino-int8"]

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 140)  # tables stay readable in logs and CI


def _disk_full(exc: BaseException) -> bool:
    from .atomic import disk_full

    return disk_full(exc)


def friendly(fn):
    """Turn our own errors into one red line and exit code 2, instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AceError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except Exception as exc:  # a Qdrant server lost mid-command; a full disk mid-write (safetensors: os error 28)
            from qdrant_client.http.exceptions import ResponseHandlingException

            if isinstance(exc, ResponseHandlingException):  # a Qdrant server that went away after it was opened
                from .index.store import shown_url

                url = kwargs.get("qdrant_url")
                where = f" at {shown_url(url)}" if url else ""
                reason = " ".join(str(getattr(exc, "source", None) or exc).split())
                console.print(f"[red]error:[/red] lost the connection to Qdrant{where} ({reason}); check the server and run "
                              "the command again", highlight=False, soft_wrap=True)
                sys.exit(2)
            if not _disk_full(exc):
                raise
            console.print(f"[red]error:[/red] no space left on the device while writing ({exc}); the previous output "
                          "is intact: free some space and run the command again", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


@click.group(cls=AceGroup)
@click.version_option(package_name="ace-llamaindex")
def cli() -> None:
    """Mine hard negatives, fine-tune, evaluate and serve embeddings for LlamaIndex + Qdrant."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def dataset_options(f):
    f = click.option("--strict", is_flag=True,
                     help="Refuse empty documents/queries and qrels to them (default: drop and count them).")(f)
    f = click.option("--format", "fmt", default=None, help="Dataset format (default: auto-detect). See `ace plugins`.")(f)
    f = click.option("--split", default="test", show_default=True, help="qrels split of a BEIR folder.")(f)
    return click.argument("dataset", required=False, type=click.Path(path_type=Path))(f)


def workers_option(f):
    """``--workers N``: the whole command encodes with N processes (sentence-transformers' multi-process pool: one per
    GPU, else CPU processes sharing the cores; embeddings.workers). Put it under ``@friendly``."""

    @functools.wraps(f)
    def wrapper(*args, workers, **kwargs):
        from .embeddings.workers import encoding_workers

        with encoding_workers(workers):
            return f(*args, **kwargs)

    return click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help=WORKERS_HELP)(wrapper)


WORKERS_HELP = ("Encode with N processes: one per GPU, else CPU processes sharing the cores (1: this process). Each "
                "process loads the model (seconds), so it pays on large corpora.")


# ---- options several commands take, each declared once ------------------------------------------------------------
ENGINE = click.option("--engine", default="auto", show_default=True,
                      help="The Qdrant engine: auto (Qdrant Edge when installed, else qdrant-client's local mode; the engine "
                           "that already holds the collection in --qdrant-path wins), local, edge, or a registered engine.")
MAX_QUERIES = click.option("--max-queries", type=click.IntRange(min=1), default=None,
                           help="A seeded random sample of this many queries.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
# where a serving collection lives (index, search, rollout, rollback, experiment)
SERVING_LOCATION = [
    click.option("--collection", default="ace_memories", show_default=True, help="The name applications serve from."),
    click.option("--qdrant-path", default="qdrant_data", show_default=True, help="Embedded Qdrant folder."),
    click.option("--qdrant-url", default=None, help="Qdrant server or cluster (overrides --qdrant-path)."),
]
# an existing collection a command reads (mine: the current system; train: the champion)
EXISTING_COLLECTION = [
    click.option("--collection", default=None, help="An existing Qdrant collection: `ace mine` mines over it (your "
                 "current system); `ace train` reads the champion it serves (what `ace rollout` recorded)."),
    click.option("--qdrant-path", default=None, help="Embedded Qdrant folder holding --collection."),
    click.option("--qdrant-url", default=None, help="Qdrant server or cluster holding --collection."),
]


def with_options(*options):
    """Apply click options in the order given (as if written one above the other)."""
    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return apply


def cluster_options(f):
    """``--shards``, ``--replication-factor``, ``--write-consistency``: how a new collection is spread over a Qdrant
    cluster (--qdrant-url); given for an embedded engine they are one clear error."""
    for opt in reversed([
        click.option("--shards", "shard_number", default=None, type=click.IntRange(min=1),
                     help="Qdrant server/cluster: shards of a new collection (default: the server's, one per node)."),
        click.option("--replication-factor", default=None, type=click.IntRange(min=1),
                     help="Qdrant server/cluster: copies of each shard (default: the server's, 1; 2 or more for a "
                          "cluster that keeps serving while a node is down)."),
        click.option("--write-consistency", "write_consistency_factor", default=None, type=click.IntRange(min=1),
                     help="Qdrant server/cluster: replicas that must acknowledge a write (default: the server's, 1; at "
                          "most --replication-factor)."),
    ]):
        f = opt(f)
    return f


def hybrid_options(f):
    """``--rrf-k``, ``--dense-weight``, ``--sparse-weight``: how dense and BM25 results are fused; the command receives
    them as one ``hybrid`` (:class:`~ace_llamaindex.index.store.HybridParams`)."""

    @functools.wraps(f)
    def wrapper(*args, rrf_k, dense_weight, sparse_weight, **kwargs):
        from .index.store import HybridParams

        return f(*args, hybrid=HybridParams(rrf_k=rrf_k, dense_weight=dense_weight, sparse_weight=sparse_weight), **kwargs)

    return with_options(
        click.option("--rrf-k", default=60, show_default=True, type=click.IntRange(min=1)),
        click.option("--dense-weight", default=1.0, show_default=True, type=FiniteFloat(min=0)),
        click.option("--sparse-weight", default=1.0, show_default=True, type=FiniteFloat(min=0)),
    )(wrapper)


def _load(dataset, fmt, split, strict):
    """Load a dataset and say in one line what hygiene dropped."""
    from .data.loading import load_dataset

    ds = load_dataset(dataset, fmt, strict=strict, split=split)
    if ds.dropped:
        console.print(f"[yellow]warning:[/yellow] {ds.hygiene_summary()} (--strict refuses them)", highlight=False)
    return ds


def _load_unseen(dataset, fmt, split, strict, model):
    """Load a dataset without the queries ``model`` trained or validated on (its training card says which)."""
    from .evaluate.overlap import training_overlap, without_queries
    from .records.card import read_card

    ds = _load(dataset, fmt, split, strict)
    card = read_card(model)
    seen = training_overlap(ds, card) if card else set()
    if seen:
        console.print(f"[yellow]warning:[/yellow] left out {len(seen)} queries the model trained or validated on", highlight=False)
        ds = without_queries(ds, seen)
    return ds


def _training_help(name: str, spec) -> str:
    """A training option's help; where its ``None`` means each method's own default (the options the fine-tunes take
    and the adapters replace by theirs), those defaults, read where they are written: the full fine-tune's in
    ``train.training.FULL_DEFAULTS``, the adapter's in ``AdapterConfig``."""
    from .options import default
    from .train.adapter import ADAPTER_FIELDS, AdapterConfig
    from .train.common import FINE_TUNES, REFUSED, TrainConfig
    from .train.training import FULL_DEFAULTS

    if default(TrainConfig, name) is not None or spec.roles.get("auto") != FINE_TUNES:
        return spec.help
    full = FULL_DEFAULTS.get(name)
    adapter = default(AdapterConfig, ADAPTER_FIELDS[name]) if name in ADAPTER_FIELDS else None
    if full is None and adapter is None:
        return spec.help
    text = spec.help.rstrip(".")
    if full is not None:
        text = f"{text}. Default: {short_number(full)}" if text else f"Default: {short_number(full)}"
    if adapter is not None:
        text += f" (adapter: {short_number(adapter)})"
    elif spec.roles.get("adapter") == REFUSED:
        text += " (full fine-tune only)"
    return text + "."


def _training_fields() -> list[click.Option]:
    from .train.common import TrainConfig

    return field_options(TrainConfig, _training_help)


def _mining_fields() -> list[click.Option]:
    from .mine.mining import MiningOptions

    return field_options(MiningOptions)


def mining_options(f):
    """The mining options: ``--miner`` and ``--model``, one per :class:`~ace_llamaindex.mine.mining.MiningOptions` field
    with a flag (:func:`field_options`), ``--seed`` and ``--engine``."""
    opts = [
        click.option("--miner", default="dense", show_default=True, help="Miner plugin: dense, bm25, hybrid, or an installed one."),
        click.option("--model", default=None, help="Embedding model of the current system (default: bundled all-MiniLM-L6-v2)."),
        generated_options(_mining_fields),
        click.option("--seed", default=42, show_default=True, type=int),
        ENGINE,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _mining(kw: dict):
    """The :class:`~ace_llamaindex.mine.mining.MiningOptions` of a command's mining options (:func:`from_options`);
    ``seed`` is the command's ``--seed``; ``fill_random`` and ``hybrid`` have no flag and keep their defaults."""
    from .mine.mining import MiningOptions

    return from_options(MiningOptions, kw, seed=kw["seed"])


def _trainer_alias(f):
    """``--trainer``, ``--method``'s earlier name: deprecated; it still works, with a DeprecationWarning and a line."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        alias = kwargs.pop("trainer_alias", None)
        if alias is not None:
            import warnings

            from click.core import ParameterSource

            from .errors import AceDeprecationWarning

            if click.get_current_context().get_parameter_source("trainer") is not ParameterSource.DEFAULT:
                raise click.UsageError("give --method (--trainer is its deprecated earlier name), not both")
            warnings.warn("--trainer is deprecated: use --method (the same option)", AceDeprecationWarning, stacklevel=2)
            console.print("[yellow]warning:[/yellow] --trainer is deprecated: use --method (the same option)", highlight=False)
            kwargs["trainer"] = alias
        return f(*args, **kwargs)

    return wrapper


def training_options(f):
    """The training options: one per :class:`~ace_llamaindex.train.common.TrainConfig` field with a flag, made from its
    declaration (:func:`field_options`), then ``--method`` (which trainer) and its deprecated name ``--trainer``."""
    f = _trainer_alias(f)
    opts = [
        generated_options(_training_fields),
        click.option("--method", "trainer", default="auto", show_default=True,
                     help="auto: train a query adapter, the full fine-tune, weight interpolations of base and fine-tuned "
                          "and an adapter on the fine-tune, keep the best the gate calls better on unseen documents (the "
                          "cheaper on a tie; none: the base stays; full-fine-tune options apply to the fine-tunes). "
                          "full: fine-tune only. adapter: query-side adapter on frozen vectors (no re-indexing, seconds "
                          "on a CPU, works over an endpoint). Or an installed trainer plugin."),
        click.option("--trainer", "trainer_alias", default=None, hidden=True, help="Deprecated: --method."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _training(kw: dict, seed: int):
    """The :class:`~ace_llamaindex.train.common.TrainConfig` of a command's training options (:func:`from_options`):
    ``seed`` is the command's own ``--seed``; ``seen_share_source``, ``trust_remote_code`` and ``extra`` have no flag
    (their declarations say why) and keep their defaults."""
    from .train.common import TrainConfig

    return from_options(TrainConfig, kw, seed=seed)


def _interval_line(s) -> str:
    """``0.500 -> 0.600, +0.100 [+0.050, +0.150]``: a :class:`~ace_llamaindex.records.verdict.Comparison`'s means
    (when recorded) and its difference with its interval."""
    change = f"{s.base:.3f} -> {s.finetuned:.3f}, " if s.base is not None else ""
    return change + s.interval()


def _verdict_colour(verdict) -> str:
    """The colour a :class:`~ace_llamaindex.records.verdict.Verdict` (or None: no verdict) is printed in."""
    from .records.verdict import Verdict

    return {Verdict.BETTER: "green", Verdict.WORSE: "red"}.get(verdict, "yellow")


def inconclusive_reason(g) -> str:
    """Why a verdict is not "better", in words: too few queries for a gain of that size, or the base near the ceiling
    (``g``: a measured :class:`~ace_llamaindex.records.gate.GateResult`, or the dict a card holds)."""
    from .records.gate import GateResult
    from .records.verdict import Verdict

    gate = g if isinstance(g, GateResult) else GateResult.read(g)
    s = gate.deciding()
    if gate.verdict is Verdict.CANT_TELL:
        return (f"{gate.decided_by}: every validation query but those asks about documents training queries also had, "
                "so a gain there could be memorised documents. More queries about other documents would tell.")
    if s.base is not None and s.base >= 0.9:
        return (f"the base model already reaches {gate.metric} {s.base:.3f} there: little room to improve, and the "
                "fine-tuned model is not better with 95% confidence.")
    half = (s.ci95[1] - s.ci95[0]) / 2
    if s.delta and s.delta > 0 and half > 0:
        need = int(s.n * (half / s.delta) ** 2) + 1
        return (f"the 95% interval on {s.n} queries is +/-{half:.3f} wide, too wide to tell a gain of {s.delta:+.3f} "
                f"from noise; about {need} such queries would.")
    return f"on {s.n} queries the fine-tuned model does not gain (delta {s.delta:+.3f})."


def print_training(card) -> None:
    """The promotion gate's verdict (and, for --method auto, every candidate's) and the fusion, for people
    (``card``: a :class:`~ace_llamaindex.records.card.TrainingCard` or its dict)."""
    from .records.card import TrainingCard
    from .records.gate import ALL_QUERIES, GATE_METRIC
    from .records.verdict import Verdict

    card = TrainingCard.from_dict(card)
    gate = card.gate_result()
    for candidate in card.judged_candidates():
        cg = candidate.gate_result()
        sub = cg.subset(cg.decided_by)
        line = f"{cg.decided_by} {sub.interval()}" if sub is not None and sub.measured \
            else f"{cg.delta:+.3f} ({cg.decided_by})"
        console.print(f"  candidate {candidate.name:<18} {line}: {candidate.verdict}"
                      f"{' (re-index)' if candidate.reindex else ' (no re-index)'}", highlight=False)
    if gate is not None and gate.measured:
        colour = _verdict_colour(gate.verdict)
        label = f" for {card.gate_of}" if card.gate_of else ""
        console.print(f"promotion gate{label} ({gate.n_queries} validation queries): {gate.metric} "
                      f"{_interval_line(gate.overall())}: [{colour}]{escape(gate.verdict)}[/{colour}] "
                      f"(decided by {gate.decided_by})", highlight=False)
        for name, sub in gate.subset_comparisons().items():
            if sub.measured:
                console.print(f"  {name} ({sub.n} queries): {_interval_line(sub)}: {sub.verdict}", highlight=False)
    elif card.gate:
        console.print(f"promotion gate: {gate.words if gate else None}", highlight=False)
    if gate is not None and gate.base is not None and \
            gate.verdict in (Verdict.NO_CLEAR_DIFFERENCE, Verdict.WORSE, Verdict.CANT_TELL):
        console.print(f"[yellow]no gain shown:[/yellow] {inconclusive_reason(gate)}", highlight=False)
    champion = card.champion_record()
    if champion:
        cg = champion.gate  # None: an old card's champion without a gate (printed as such)
        sub = cg.deciding() if cg else None
        evidence = f"{_interval_line(sub)}: " if sub is not None and sub.measured else ""
        colour = _verdict_colour(cg.verdict if cg else None)
        console.print(f"against the champion ({champion.source}, {cg.n_queries if cg else 0} validation queries): "
                      f"{gate.metric if gate else GATE_METRIC} {evidence}"
                      f"[{colour}]{escape(str(cg.words if cg else None))}[/{colour}]"
                      f" (decided by {cg.decided_by if cg else ALL_QUERIES})", highlight=False, soft_wrap=True)
        console.print(f"  champion history: {champion.history}", highlight=False, soft_wrap=True)
    if card.choice:
        console.print(f"method: {card.chosen} ({card.choice['reason']})", highlight=False)
    if card.fusion:
        console.print(f"fusion saved with the model: {card.fusion['name']} ({card.fusion['reason']})", highlight=False)


def print_report(report: dict, metric: str = "ndcg@10") -> None:
    """The overall table and the verdicts, for people."""
    from .records.verdict import SystemComparison, ci_text

    metrics = [m for m in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "cosine") if m in report["metrics"]]
    metrics += [m for m in report["metrics"] if m not in metrics]
    table = Table(title=f"{report['n_queries']} queries, {report['n_documents']} documents")
    table.add_column("system")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, row in report["overall"].items():
        table.add_row(name, *[f"{row[m]:.3f}" if m in row else "–" for m in metrics])
    out.print(table)
    verdicts = Table(title="paired bootstrap, 95% CI")
    for col in ("candidate vs baseline", "metric", "delta", "95% CI", "verdict"):
        verdicts.add_column(col)
    for c in (SystemComparison.read(row) for row in report["comparisons"]):
        if c.metric in ("recall@1", metric):
            colour = _verdict_colour(c.verdict)
            verdicts.add_row(f"{c.candidate} vs {c.baseline}", c.metric, f"{c.delta:+.3f}", ci_text(c.ci95),
                             f"[{colour}]{c.verdict}[/{colour}]")
    out.print(verdicts)
    fusion = report.get("fusion")
    if fusion:
        out.print(f"fusion chosen on validation queries (saved with the model, used by serving): {fusion['name']}: "
                  f"{fusion['reason']}", highlight=False)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@cli.command()
@dataset_options
@mining_options
@click.option("-o", "--output", default="training_data.json", show_default=True, type=click.Path(path_type=Path))
@with_options(*EXISTING_COLLECTION)
@click.option("--vector-name", default=None, help="Named dense vector to search in --collection.")
@click.option("--text-field", default="text", show_default=True, help="Payload key with the document text.")
@click.option("--id-field", default="doc_id", show_default=True, help="Payload key with the corpus id.")
@click.option("--from-feedback", "feedback", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A feedback log (feedback_log= of the retriever or vector store) instead of DATASET: accepted "
                   "results are positives, rejected ones shown above them negatives. Needs --collection.")
@click.option("--test-fraction", default=0.2, show_default=True, type=FiniteFloat(0, 1, max_open=True),
              help="With --from-feedback: the most recent share of queries, written to OUTPUT's .test.json for `ace eval`.")
@friendly
@workers_option
def mine(dataset, fmt, split, strict, output, collection, qdrant_url, qdrant_path, vector_name, text_field, id_field,
         feedback, test_fraction, **kw):
    """Mine hard negatives for DATASET (default: the shipped demo) and write training_data.json."""
    from .atomic import check_output

    check_output(output)
    from .loop import MiningCollection, mine_training_data

    options = _mining(kw)
    options.validate()
    source = MiningCollection(collection, qdrant_path, qdrant_url, vector_name, text_field, id_field)
    mined = mine_training_data(dataset if feedback else _load(dataset, fmt, split, strict), output, source=source,
                               feedback=feedback, miner=kw["miner"], model=kw["model"], options=options,
                               engine=kw["engine"], test_fraction=test_fraction, notify=_note)
    examples = mined.examples
    console.print(f"{len(examples)} examples, {sum(len(e.negatives) for e in examples)} negatives -> {output}")


def _note(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("training_data", type=click.Path(path_type=Path))
@click.option("-o", "--output", default="models/ace-finetuned", show_default=True, type=click.Path(path_type=Path))
@click.option("--seed", default=42, show_default=True, type=int)
@endpoint_options(url=("--base-url", "--method adapter over an OpenAI-compatible endpoint, e.g. http://localhost:1234/v1"),
                  model_name=("--base-model-name", "Model name at --base-url."))
@click.option("--champion", "champion_dir", default=None, type=click.Path(path_type=Path),
              help="The model serving now (a folder `ace train` wrote): every candidate must beat it, not only the base.")
@with_options(*EXISTING_COLLECTION)
@click.option("--nproc", default=None, type=click.IntRange(min=1),
              help="Train data-parallel on N processes of this machine (starts torchrun; one GPU each on CUDA, else the "
                   "CPU cores shared out; --method auto or full; --batch-size is per process). Under torchrun or "
                   "accelerate launch, leave it out.")
@training_options
@friendly
def train(training_data, output, seed, endpoint, champion_dir, collection, qdrant_path, qdrant_url, nproc, **kw):
    """Train on TRAINING_DATA (from `ace mine`) and write what the gate promotes to OUTPUT (default --method auto:
    a query adapter, a fine-tuned model, or both; nothing when no candidate is better).

    \b
    Budget: each option's default is in its help below (learning rate, epochs, validation share...).
    Promotion gate: the new model is compared with its base on the validation queries (paired bootstrap, nDCG@10);
    unless it is better, an existing model at OUTPUT is kept (--force replaces it). With a champion (--champion or
    --collection: the model serving now) every candidate must also beat the champion on the same queries, and
    candidates continuing the champion (its adapter or weights, replaying its training data) join them. The fusion
    chosen on the same queries is saved as OUTPUT/fusion.json and used by `ace search`, `ace eval` and the retriever."""
    from .atomic import check_output

    check_output(output, "dir")
    from .loop import train_model
    from .plugins.manager import get
    from .train import distributed
    from .train.training import dedicated_process, detect_device

    trainer = get("trainers", kw["trainer"])
    if nproc is not None and distributed.world_size() > 1:
        raise OptionError("--nproc starts torchrun itself: leave it out under torchrun or accelerate launch")
    distributed.check_trainer(trainer, kw["trainer"], nproc)
    if nproc is not None and nproc > 1:  # refused here, before any process starts, what the processes would refuse
        distributed.check_device(detect_device(kw["device"]), nproc)
        # a missing or malformed file, bad options, a global batch the data cannot fill: one line here, no process
        distributed.check_before_launch(training_data, _training(kw, seed), nproc, kw["trainer"],
                                        champion=bool(champion_dir or collection))
        sys.exit(distributed.launch(nproc, _command_line(click.get_current_context(), drop={"nproc"})))
    main_rank = distributed.is_main()  # under a launcher rank 0 alone prints, judges and writes
    distributed.start(detect_device(kw["device"]))  # joins the other processes (one process: nothing)
    # every trainer gets an endpoint; one that fine-tunes weights refuses it (TrainResult says why)
    base_encoder = endpoint.encoder() if endpoint.url else None
    # the `ace` command's own process trains and exits: its memory budget counts all it holds (called in-process, as
    # by click's CliRunner, the caller's memory is not ours to count)
    with dedicated_process() if _OWN_PROCESS else contextlib.nullcontext():
        result = train_model(training_data, output, method=kw["trainer"], config=_training(kw, seed),
                             champion=champion_dir, collection=collection, qdrant_path=qdrant_path,
                             qdrant_url=qdrant_url, base_encoder=base_encoder, notify=_note)
    if not main_rank:
        console.print(f"rank {distributed.rank()} of {distributed.world_size()}: trained data-parallel and wrote nothing; "
                      f"rank 0 wrote {result.model_dir}", highlight=False, soft_wrap=True)
        return
    card = result.card
    neg = card.negatives or {}
    if neg.get("padded") or neg.get("in_batch_only"):
        console.print(f"[yellow]note:[/yellow] {neg['padded']} example(s) had fewer than {neg['negatives_per_example']} hard "
                      f"negatives (their own repeated); {neg['in_batch_only']} had none (in-batch negatives only)", highlight=False)
    poisoned = card.data_checks.get("negatives_equal_to_positive")
    if poisoned:
        console.print(f"[yellow]note:[/yellow] dropped {poisoned} hard negative(s) identical to their example's positive",
                      highlight=False)
    print_training(card)
    if card.resumed_from_checkpoint:
        console.print(f"resumed from {card.resumed_from_checkpoint}", highlight=False)
    from .records.outcome import Outcome, outcome
    from .records.plan import ServingPlan
    from .records.verdict import Verdict

    serving, done = result.serving, outcome(result)
    if done is Outcome.PROMOTED:
        peak = (card.peak_memory or {}).get("rss_gb")
        console.print(f"model -> {result.model_dir} ({card.train_seconds} s on {card.device or 'cpu'}"
                      f"{f', peak RSS {peak} GB' if peak else ''})", highlight=False)
        if result.gate is not None and result.gate.verdict != Verdict.BETTER and not kw["force"]:
            against = "the champion" if card.champion else "its base"
            console.print(f"[yellow]written, but not shown better than {against}:[/yellow] `ace rollout` will refuse it "
                          "(nothing was at OUTPUT to keep; --force to roll it out anyway)", highlight=False)
        plan = ServingPlan.from_dict(serving) if serving else None
        if plan and plan.adapter:
            base = "FineTunedEmbedding(model_name=OUT)" if plan.reindex else f"FineTunedEmbedding(model_name={plan.model!r})"
            console.print(f"serve: AdapterEmbedding({base}, OUT) with OUT = {result.model_dir}"
                          + ("; re-index the documents" if plan.reindex else "; the base's index is used as is"), highlight=False)
        elif plan and plan.reindex:
            console.print("serve: FineTunedEmbedding(model_name=OUT); index the documents again (ace index --model OUT)",
                          highlight=False)
    elif done is Outcome.BASE_STAYS:
        stays = "the champion stays" if card.champion else "the base model stays"
        console.print(f"[yellow]{stays}:[/yellow] no method was better on validation; nothing was written "
                      f"to {result.model_dir} (the evidence: {result.model_dir}.not-promoted.json)", highlight=False)
    else:  # Outcome.KEPT
        console.print(f"[yellow]not promoted:[/yellow] the model at {result.model_dir} was kept; the new one is not "
                      "better on validation (use --force to replace it anyway)", highlight=False)


def _command_line(ctx: click.Context, drop: set[str]) -> list[str]:
    """The command, its options and arguments as given (defaults left out, ``drop`` too), to run it again."""
    from click.core import ParameterSource

    options, positional = [ctx.info_name], []
    for param in ctx.command.params:
        if param.name in drop or ctx.get_parameter_source(param.name) in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Argument):
            positional += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        elif getattr(param, "is_flag", False) and param.secondary_opts:  # --continual/--no-continual
            options.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "is_flag", False):
            options += [param.opts[0]] if value else []
        else:
            options += [part for v in (value if param.multiple else [value]) for part in (param.opts[0], str(v))]
    return [*options, "--", *positional]


@cli.command(name="eval")
@dataset_options
@click.option("--finetuned", type=click.Path(path_type=Path), help="Fine-tuned model folder (omit to evaluate the baseline only).")
@endpoint_options(model=("--baseline", "Baseline sentence-transformers model (default: bundled all-MiniLM-L6-v2)."),
                  url=("--baseline-url", "Baseline as an OpenAI-compatible endpoint, e.g. http://localhost:1234/v1"),
                  model_name=("--baseline-model", "Model name at --baseline-url, e.g. text-embedding-nomic-embed-text-v1.5"))
@MAX_QUERIES
@click.option("--metric", "metric_names", multiple=True, help="Metric plugins to compute (default: all installed).")
@hybrid_options
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A query adapter (from `ace train --method adapter`) over the baseline: rows adapter, adapter+hybrid.")
@click.option("--exclude-training-queries", is_flag=True,
              help="Leave out queries the fine-tuned model trained or validated on (its training card lists them).")
@click.option("--out-dir", default="reports", show_default=True, type=click.Path(path_type=Path))
@click.option("--report", "reporters", multiple=True, help="Reporters to write (default: all: json, md, png).")
@ENGINE
@friendly
@workers_option
def eval_cmd(dataset, fmt, split, strict, finetuned, endpoint, max_queries, metric_names, hybrid, adapter_dir,
             exclude_training_queries, out_dir, reporters, engine):
    """Compare baseline vs fine-tuned (dense and hybrid, plus BM25) on DATASET.

    With a fine-tuned model that has a fusion.json, the row finetuned+fusion shows the fusion serving uses."""
    from .atomic import check_output

    check_output(out_dir, "dir")
    evidence = finetuned.with_name(finetuned.name + ".not-promoted.json") if finetuned and finetuned.name else None
    if evidence and not finetuned.exists() and evidence.is_file():  # `ace train` kept the base: no folder at OUT
        try:
            reason = (json.loads(evidence.read_text()).get("choice") or {}).get("reason")
        except (OSError, ValueError, AttributeError):
            reason = None
        raise OptionError(f"nothing was promoted at {finetuned}: {reason or 'no method was better than the base'} (the "
                          f"evidence: {evidence}); evaluate the base alone (omit --finetuned) or train again")
    from .embeddings.query_adapter import AdaptedEncoder, QueryAdapter
    from .evaluate.evaluate import compared_systems, evaluate
    from .evaluate.overlap import training_overlap, without_queries
    from .evaluate.reporting import write_reports
    from .index.fusion_choice import load_fusion
    from .plugins.manager import components, get
    from .records.card import read_card
    from .serve.served_model import read_serving, serving_encoder

    ds = _load(dataset, fmt, split, strict)
    card = read_card(finetuned) if finetuned else None
    warnings = []
    if card:
        print_training(card)
        overlap = training_overlap(ds, card)
        if overlap and exclude_training_queries:
            ds = without_queries(ds, overlap)
            console.print(f"left out {len(overlap)} queries the model trained or validated on", highlight=False)
        elif overlap:
            warnings.append(f"{len(overlap)} of {len(ds.queries)} queries were in {finetuned}'s training or validation "
                            "data: these numbers flatter the fine-tuned model (--exclude-training-queries leaves them out)")
            console.print(f"[yellow]warning:[/yellow] {warnings[-1]}", highlight=False)
    base = endpoint.encoder()
    tuned = serving_encoder(read_serving(finetuned), base) if finetuned else None
    metrics = {n: get("metrics", n) for n in metric_names} if metric_names else {n: c.obj for n, c in components("metrics").items()}
    adapted = AdaptedEncoder(base, QueryAdapter.load(adapter_dir)[0], label="adapter") if adapter_dir else None
    fusion = load_fusion(finetuned) if finetuned else None
    systems, comparisons = compared_systems(base, tuned, fusion=fusion, adapted=adapted,
                                            hybrid=hybrid)
    report = evaluate(ds, systems, metrics=metrics, max_queries=max_queries, engine=engine, comparisons=comparisons)
    report.data["fusion"] = fusion.to_dict() if fusion else None
    report.data["warnings"] = warnings
    if card:
        report.data["training_card"] = card.to_dict()
    print_report(report.data)
    for name, path in write_reports(report, out_dir, list(reporters) or None).items():
        console.print(f"{name} report -> {path}")


@cli.command()
@dataset_options
@click.option("--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--test-fraction", default=0.25, show_default=True, type=FiniteFloat(),
              help="Queries held out for evaluation (between 0 and 1).")
@click.option("--test-split", type=click.Choice(["documents", "queries"]), default="documents", show_default=True,
              help="documents: hold out whole documents with all their queries (the test asks about memories no "
                   "training query touched); queries: random queries.")
@mining_options
@training_options
@friendly
def pipeline(dataset, fmt, split, strict, out_dir, test_fraction, test_split, **kw):
    """Mine, fine-tune and evaluate end to end (default: the shipped demo dataset, embedded Qdrant)."""
    from .atomic import check_output

    check_output(out_dir, "dir")
    from .pipeline import run_pipeline
    from .records.outcome import Outcome, outcome

    if not 0 < test_fraction < 1:
        raise OptionError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    ds = _load(dataset, fmt, split, strict)
    if kw["model"] and not kw["base_model"]:
        kw["base_model"] = kw["model"]
    console.print(f"dataset: {ds.source}: {len(ds.queries)} queries, {len(ds.corpus)} documents")
    result = run_pipeline(ds, out_dir, miner=kw["miner"], trainer=kw["trainer"], mining=_mining(kw),
                          training=_training(kw, kw["seed"]), test_fraction=test_fraction, seed=kw["seed"], engine=kw["engine"],
                          split_by=test_split.rstrip("s"))
    console.print(f"training data -> {result.training_data}")
    if outcome(result.card) is Outcome.BASE_STAYS:
        console.print("[yellow]the base model stays:[/yellow] no method was better on validation, so the test below "
                      "compares only the base model's systems", highlight=False)
    else:
        console.print(f"model -> {result.model_dir}")
    print_training(result.card)
    print_report(result.report.data)
    for name, path in result.reports.items():
        console.print(f"{name} report -> {path}")


@cli.command(name="tune-fusion")
@dataset_options
@click.option("--model", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Fine-tuned model folder; fusion.json is written into it.")
@MAX_QUERIES
@ENGINE
@friendly
def tune_fusion_cmd(dataset, fmt, split, strict, model, max_queries, engine):
    """Choose the fusion for MODEL on DATASET's queries (use queries it did not train on) and save fusion.json."""
    from .embeddings.encoding import CachedEncoder
    from .evaluate.evaluate import sample_queries
    from .evaluate.fusion_selection import select_fusion
    from .records.verdict import Comparison, ci_text

    ds = _load_unseen(dataset, fmt, split, strict, model)
    ds = ds.subset(sample_queries(list(ds.queries), max_queries))
    choice = select_fusion(ds, CachedEncoder(str(model), cache_dir=False), engine=engine, show_progress=True)
    table = Table(title=f"fusion candidates on {choice.n_queries} queries ({choice.metric})")
    for col in ("candidate", choice.metric, "vs dense", "95% CI", "verdict"):
        table.add_column(col)
    for name, score in choice.scores.items():
        v = choice.vs_dense.get(name)
        c = Comparison.read(v, f"fusion vs_dense.{name}") if v else None
        table.add_row(name, f"{score:.3f}", f"{c.delta:+.3f}" if c else "", ci_text(c.ci95) if c else "",
                      c.verdict if c else "")
    out.print(table)
    path = choice.save(model)
    console.print(f"chosen: {choice.summary()} -> {path}", highlight=False)


def print_exports(records) -> None:
    """The exports of a model folder against torch, and which one ``backend="auto"`` serves."""
    table = Table(title="exports (measured against torch in the same run)")
    for col in ("export", "nDCG@10 torch → export", "min cosine", "same space", "query ms torch → export",
                "docs/s torch → export", "auto may pick"):
        table.add_column(col)
    for r in records:
        ndcg = f"{r.ndcg_torch:.4f} → {r.ndcg_export:.4f}" if r.ndcg_loss is not None else "not checked"
        speed = lambda a, b: f"{a:.1f} → {b:.1f}" if a and b else "–"  # noqa: E731
        table.add_row(r.name, ndcg, f"{r.min_cosine:.4f}", "yes" if r.same_space else "no (own named vector)",
                      speed(r.query_ms_torch, r.query_ms), speed(r.docs_per_s_torch, r.docs_per_s), r.why_not_auto() or "yes")
    out.print(table)


@cli.command(name="export")
@click.argument("model", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--backend", "targets", multiple=True, required=True, type=click.Choice(EXPORTS),
              help="onnx (onnxruntime) or openvino, -int8 for int8 quantisation; repeat for several.")
@click.option("--data", "dataset", default=None, type=click.Path(path_type=Path),
              help="Queries to check quality on (use ones the model did not train on); without it `auto` won't pick the export.")
@click.option("--format", "fmt", default=None)
@click.option("--split", default="test", show_default=True)
@friendly
def export_cmd(model, targets, dataset, fmt, split):
    """Export MODEL's transformer for fast CPU inference (kept beside its PyTorch weights), checked against torch."""
    from .embeddings.backends import read_exports
    from .train.exports import export_model

    check = _load_unseen(dataset, fmt, split, False, model) if dataset is not None else None
    for target in targets:
        backend, _, quantize = target.partition("-")
        with console.status(f"exporting {target}"):
            export_model(model, backend, quantize or None, check=check)
    print_exports(read_exports(model))


def serving_options(f):
    opts = [
        click.option("--model", default=None, help="Fine-tuned model folder or HF id (default: bundled all-MiniLM-L6-v2)."),
        click.option("--fallback-url", default=None, help="OpenAI-compatible endpoint to fall back to, e.g. http://localhost:1234/v1"),
        click.option("--fallback-model", default="text-embedding", show_default=True, help="Model name at --fallback-url."),
        *SERVING_LOCATION,
        click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default=None,
                     help="Default: the fusion saved with the model (fusion.json), else dense. hybrid = plain RRF."),
        ENGINE,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _retriever(model, fallback_url, fallback_model, qdrant_path, qdrant_url, collection, mode, engine, top_k=10,
               feedback_log=None):
    from .embeddings.models import DEFAULT_MODEL
    from .serve.embedding import FineTunedEmbedding
    from .serve.http_embedding import OpenAICompatibleEmbedding
    from .serve.retriever import HybridQdrantRetriever
    from .serve.served_model import read_serving, serving_embedding

    fallback = OpenAICompatibleEmbedding(base_url=fallback_url, model_name=fallback_model) if fallback_url else None
    serving = read_serving(model) if model and Path(model).is_dir() else {"model": model or DEFAULT_MODEL}
    embed = serving_embedding(serving, lambda name: FineTunedEmbedding(name or DEFAULT_MODEL, fallback=fallback))
    return HybridQdrantRetriever(embed, path=None if qdrant_url else qdrant_path, url=qdrant_url, collection=collection,
                                 mode=mode, similarity_top_k=top_k, engine=engine, feedback_log=feedback_log)


def rollout_location(collection, qdrant_path, qdrant_url, engine):
    from .index.engines import open_index

    if not qdrant_url and not Path(qdrant_path).exists():
        raise OptionError(f"no index at {qdrant_path!r}; run `ace index` first (or pass --qdrant-path/--qdrant-url)")
    return open_index(collection, path=None if qdrant_url else qdrant_path, url=qdrant_url, engine=engine)


location_options = with_options(*SERVING_LOCATION, ENGINE, AS_JSON)


@cli.command(name="rollout")
@click.argument("model")
@location_options
@click.option("--previous-model", default=None,
              help="What serves the collection now, if it does not say (default: the bundled all-MiniLM-L6-v2).")
@click.option("--fallback-url", default=None, help="The serving fallback endpoint, to embed its space too when missing.")
@click.option("--fallback-model", default="text-embedding", show_default=True)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--dry-run", is_flag=True, help="Say what would happen and how long encoding will take; change nothing.")
@click.option("--heldout", default=None, type=click.Path(path_type=Path, exists=True),
              help="Held-out queries (a dataset, e.g. the training_data.test.json of `ace mine --from-feedback`): judge "
                   "MODEL and what the collection serves now on them, and refuse MODEL unless it is better.")
@click.option("--force", is_flag=True, help="Roll out a model not shown better than what the collection serves now.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help=WORKERS_HELP)
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue the version a killed rollout of the same model left (only what it lacks is embedded); "
                   "--no-resume removes it and starts again.")
@cluster_options
@friendly
def rollout_cmd(model, collection, qdrant_path, qdrant_url, engine, as_json, fallback_url, fallback_model, **given):
    """Serve COLLECTION with MODEL without downtime: a fresh collection, checked, then an atomic alias switch.

    \b
    MODEL must be shown better than what COLLECTION serves now (the champion): by the comparison its training card
    holds with that champion (`ace train --collection`), by its gate against its base on a first rollout, or on
    --heldout queries; otherwise it is refused (--force rolls it out anyway; --dry-run shows the evidence).

    \b
    A rollout killed midway is resumed by the next one of the same MODEL (--no-resume starts again). --workers N
    encodes with N processes (--dry-run estimates the time with them). On a Qdrant server, the new collection gets
    --shards/--replication-factor/--write-consistency, else the settings of the collection it replaces."""
    from .deploy.rollout import RolloutOptions, rollout

    fallback = None
    if fallback_url:
        from .serve.http_embedding import OpenAICompatibleEmbedding

        fallback = OpenAICompatibleEmbedding(base_url=fallback_url, model_name=fallback_model)
    # the other flags (--previous-model, --batch-size, --dry-run, --heldout, --force, --workers, --resume, the cluster's)
    # are RolloutOptions fields of the same names
    options = RolloutOptions(**given, fallback=fallback, show_progress=not as_json)
    report = rollout(model, collection, options, index=rollout_location(collection, qdrant_path, qdrant_url, engine))
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    for note in report.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    evidence = report.evidence
    colour = "green" if evidence.get("allowed") else "red"
    console.print(f"evidence ({evidence.get('source')}): [{colour}]{escape(evidence.get('reason', ''))}[/{colour}]",
                  highlight=False, soft_wrap=True)
    if options.dry_run and not evidence.get("allowed") and not options.force:
        console.print("[red]would be refused[/red] (--force to roll it out anyway)", highlight=False)
        return
    if options.dry_run:
        resumed = (f", resuming it: {report.resumed} of them are in it already" if report.resumed else "")
        console.print(f"would embed {report.documents - report.resumed} documents of {report.previous!r} with {model} into "
                      f"{report.collection!r}{resumed} (about {report.encode_seconds:.0f} s with {report.workers} "
                      f"process{'es' if report.workers > 1 else ''}, {report.seconds_per_1000} s per 1,000; "
                      f"vectors embedded: {report.encoded_vectors}, copied: {report.copied_vectors or 'none'} + BM25), then "
                      f"point {collection!r} at it", highlight=False)
        return
    resumed = f", {report.resumed} of them already in it (resumed)" if report.resumed else ""
    console.print(f"{collection!r} now serves {report.collection!r} ({report.documents} documents{resumed}, {report.embedded} embedded in "
                  f"{report.encode_seconds} s, checks {report.checks}); previous {report.previous!r} kept for "
                  "`ace rollback`", highlight=False)


@cli.command(name="rollback")
@location_options
@friendly
def rollback_cmd(collection, qdrant_path, qdrant_url, engine, as_json):
    """Serve COLLECTION from the collection the last rollout replaced."""
    from .deploy.rollout import rollback

    was, now = rollback(collection, index=rollout_location(collection, qdrant_path, qdrant_url, engine))
    if as_json:
        out.print_json(json.dumps({"collection": collection, "from": was, "to": now}))
        return
    console.print(f"{collection!r} serves {now!r} again (was {was!r})", highlight=False)


@cli.command(name="feedback")
@click.argument("log", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("query_id")
@click.argument("doc_id")
@click.option("--accept/--reject", "relevant", required=True, help="Whether the result answered the query.")
@friendly
def feedback_cmd(log, query_id, doc_id, relevant):
    """Record a judgement of a served result (QUERY_ID: `ace search --json`'s query_id) in LOG."""
    from .serve.feedback import judgements, read_log, record_feedback

    served, _ = judgements(read_log(log))  # one clear line for a log that is missing, unreadable or malformed
    if query_id not in served:
        raise OptionError(f"{log}: query id {query_id!r} was never served there ({len(served)} served queries); judge "
                          "a query_id that `ace search --feedback-log LOG --json` printed")
    record_feedback(log, query_id, doc_id, relevant)


@cli.command()
@dataset_options
@serving_options
@cluster_options
@friendly
@workers_option
def index(dataset, fmt, split, strict, shard_number, replication_factor, write_consistency_factor, **kw):
    """Index DATASET's corpus (default: the demo memories) into Qdrant: a named vector per model + BM25."""
    from llama_index.core.schema import TextNode

    from .index.store import shown_url

    if not kw["qdrant_url"] and not kw["qdrant_path"]:  # "" would index into memory and lose it all at exit
        raise OptionError("--qdrant-path is empty: give the embedded Qdrant folder to index into (default: qdrant_data) "
                          "or --qdrant-url")
    if not kw["qdrant_url"]:  # refused before anything is opened or created
        from .index.store import cluster_options as checked_cluster

        checked_cluster(None, shard_number=shard_number, replication_factor=replication_factor,
                        write_consistency_factor=write_consistency_factor)
    ds = _load(dataset, fmt, split, strict)
    retriever = _retriever(**kw)
    retriever.index.set_cluster(shard_number, replication_factor, write_consistency_factor)  # a new collection's
    retriever.add_nodes([TextNode(id_=k, text=v) for k, v in ds.corpus.items()])
    where = f"Qdrant server {shown_url(kw['qdrant_url'])}" if kw["qdrant_url"] else f"embedded Qdrant folder {kw['qdrant_path']}"
    console.print(f"{len(ds.corpus)} documents -> collection {kw['collection']!r} ({where})", highlight=False, soft_wrap=True)


@cli.command()
@click.argument("query")
@serving_options
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@AS_JSON
@click.option("--feedback-log", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="Append what was served to this feedback log (judge it with `ace feedback`).")
@friendly
def search(query, top_k, as_json, feedback_log, **kw):
    """Search an index built by `ace index`."""
    from .index.store import shown_url

    if not kw["qdrant_url"] and not kw["qdrant_path"]:  # "" would search an empty in-memory index
        raise OptionError("--qdrant-path is empty: give the embedded Qdrant folder `ace index` wrote (default: "
                          "qdrant_data) or --qdrant-url")
    if not kw["qdrant_url"] and not Path(kw["qdrant_path"]).exists():  # a read-only command creates nothing
        raise OptionError(f"no index at {kw['qdrant_path']!r}; run `ace index` first (or pass --qdrant-path/--qdrant-url)")
    retriever = _retriever(top_k=top_k, feedback_log=feedback_log, **kw)
    if not retriever.index.exists():
        where = (f"at the Qdrant server {shown_url(kw['qdrant_url'])}" if kw["qdrant_url"]
                 else f"in the embedded Qdrant folder {kw['qdrant_path']!r} (--qdrant-path)")
        raise OptionError(f"no collection {kw['collection']!r} {where}; run `ace index --collection {kw['collection']}` "
                          "there first, or pass the --qdrant-path/--qdrant-url that holds it")
    results = retriever.retrieve(query)
    rows = [{"id": n.node.node_id, "score": n.score, "served_by": n.node.metadata.get("ace_served_by"), "text": n.node.text,
             **({"query_id": n.node.metadata[QUERY_ID]} if QUERY_ID in n.node.metadata else {})} for n in results]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for r in rows:
        out.print(f"[{r['score']:.4f}] {r['id']}: {r['text']}", highlight=False, soft_wrap=True)


@cli.command()
@AS_JSON
def plugins(as_json):
    """List installed plugins and the components they register."""
    from .plugins.manager import KINDS, plugin_state

    state = plugin_state()
    rows = [{"kind": kind, "name": c.name, "plugin": c.plugin, "source": state.sources.get(c.plugin, "?"), "description": c.description}
            for kind in KINDS for c in state.components[kind].values()]
    if as_json:
        out.print_json(json.dumps({"components": rows, "failures": state.failures}))
        return
    table = Table(title="ace plugins")
    for col in ("kind", "name", "plugin", "source", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["plugin"], r["source"], escape(r["description"]))
    out.print(table)
    for name, problem in state.failures.items():
        console.print(f"[red]plugin {name!r} is broken:[/red] {problem}")


@cli.group()
def experiment() -> None:
    """Online experiments: measure a challenger on live traffic before every user gets it.

    \b
    ace experiment start MODEL --feedback-log LOG   build the challenger beside the champion and serve the experiment
    ace experiment status                           the verdict so far, from the feedback log (--act carries it out)
    ace experiment ramp SHARE                       a canary's next step (split: 0.05 -> 0.25 -> 0.5)
    ace experiment stop --promote | --end           promote the challenger, or remove it (the champion untouched)"""


def _experiment_fields() -> list[click.Option]:
    from .records.experiment import ExperimentRecord

    return field_options(ExperimentRecord)


@experiment.command(name="start")
@click.argument("model")
@location_options
@generated_options(_experiment_fields)
@click.option("--previous-model", default=None,
              help="What serves the collection now, if it does not say (default: the bundled all-MiniLM-L6-v2).")
@friendly
def experiment_start(model, collection, qdrant_path, qdrant_url, engine, as_json, previous_model, **kw):
    """Start an online experiment on COLLECTION between what serves it and MODEL (the options: each one declared
    on :class:`~ace_llamaindex.records.experiment.ExperimentRecord`)."""
    from .deploy.experiment import start_experiment
    from .options import declared, flag
    from .records.experiment import ExperimentRecord

    given = {name: kw[opt.lstrip("-").replace("-", "_")] for name, spec in declared(ExperimentRecord).items()
             if (opt := flag(name, spec)) is not None and kw[opt.lstrip("-").replace("-", "_")] is not None}
    record = start_experiment(model, collection, **given, previous_model=previous_model,
                              index=rollout_location(collection, qdrant_path, qdrant_url, engine), show_progress=not as_json)
    if as_json:
        out.print_json(json.dumps(record.to_dict()))
        return
    console.print(f"experiment {record.id} on {collection!r}: {record.champion!r} (champion) vs {record.challenger!r} "
                  f"(challenger), {record.mode}, share {record.share:g}; retrievers and vector stores opened on "
                  f"{collection!r} take part from their next query", highlight=False)
    if record.mode == "split":
        console.print("split: the unit is the user (experiment_session(...) or user_id= in the application); a query "
                      "served without one is its own unit", highlight=False)


@experiment.command(name="status")
@location_options
@click.option("--feedback-log", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The feedback log (default: the one given at start).")
@click.option("--act/--no-act", default=None, help="Carry out a clear verdict (default: as started, --auto).")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a PNG of the difference over queries with its interval.")
@friendly
def experiment_status_cmd(collection, qdrant_path, qdrant_url, engine, as_json, feedback_log, act, plot):
    """The verdict on the experiment so far (exit 0; the decision is in the output)."""
    from .deploy.experiment import experiment_status, plot_status

    status = experiment_status(collection, feedback_log=feedback_log, act=act,
                               index=rollout_location(collection, qdrant_path, qdrant_url, engine))
    if plot:
        plot_status(status, plot)
    if as_json:
        out.print_json(json.dumps(status.to_dict()))
        return
    table = Table(title=f"experiment {status.record.id} on {collection!r} ({status.record.mode})")
    for col in ("arm", "collection", "served", "accepted", "p99 ms", "errors"):
        table.add_column(col)
    for arm, name in (("champion", status.record.champion), ("challenger", status.record.challenger)):
        a = status.arms[arm]
        table.add_row(arm, name, str(a.served), str(a.accepted),
                      "-" if a.latency_p99_ms is None else f"{a.latency_p99_ms:.1f}", str(a.errors))
    out.print(table)
    for note in status.notes:
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    from .records.experiment import Decision

    colour = {Decision.PROMOTE: "green", Decision.END: "red"}.get(status.decision, "yellow")
    console.print(f"[{colour}]{status.decision}[/{colour}]: {escape(status.reason)}", highlight=False, soft_wrap=True)
    if status.acted:
        console.print(status.acted, highlight=False)
    if plot:
        console.print(f"plot: {plot}", highlight=False)


@experiment.command(name="ramp")
@click.argument("share", type=FiniteFloat(0, 1, min_open=True))
@location_options
@click.option("--allow-lower", is_flag=True,
              help="Allow a share below the running one (it moves users from the challenger back to the champion).")
@friendly
def experiment_ramp(share, collection, qdrant_path, qdrant_url, engine, as_json, allow_lower):
    """Set the running experiment's SHARE (a canary's next step); sessions keep their arm as it grows, and the status
    compares the arms within each phase of the ramp."""
    from .deploy.experiment import set_share

    record = set_share(collection, share, allow_lower=allow_lower,
                       index=rollout_location(collection, qdrant_path, qdrant_url, engine))
    if as_json:
        out.print_json(json.dumps(record.to_dict()))
        return
    console.print(f"experiment {record.id} on {collection!r}: share {record.share:g}", highlight=False)


@experiment.command(name="stop")
@location_options
@click.option("--promote/--end", "promote", required=True,
              help="--promote serves the challenger (the champion is kept for `ace rollback`); --end removes it.")
@friendly
def experiment_stop(collection, qdrant_path, qdrant_url, engine, as_json, promote):
    """End the experiment on COLLECTION."""
    from .deploy.experiment import stop_experiment

    now = stop_experiment(collection, promote=promote, index=rollout_location(collection, qdrant_path, qdrant_url, engine))
    if as_json:
        out.print_json(json.dumps({"collection": collection, "serves": now, "promoted": promote}))
        return
    console.print(f"{collection!r} serves {now!r}", highlight=False)


_OWN_PROCESS = False  # set by main(): the `ace` command runs in a process of its own


def main() -> None:
    """The ``ace`` command."""
    import warnings

    from .errors import AceDeprecationWarning
    from .plugins.manager import add_commands
    from .stopping import stopped_by_sigterm

    # a deprecated name of ours (the 'sentence-transformers' trainer...) says so on the command line too
    warnings.filterwarnings("default", category=AceDeprecationWarning)
    add_commands(cli)
    global _OWN_PROCESS
    _OWN_PROCESS = True
    # SIGTERM ends the process like Ctrl-C does: atomic writes roll back and temporary indexes are removed.
    with stopped_by_sigterm():
        cli()


if __name__ == "__main__":
    main()
