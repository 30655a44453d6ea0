"""A trained model's card (what it was trained on, how, and the gate's verdict), read by serving and evaluation.

:class:`TrainingCard` is the one place a card is written and read: every trainer builds one, ``ace train`` saves it
beside the model (``ace_training_card.json``, or ``ace_adapter.json`` for a query adapter) and everything downstream
(evaluation, serving, the champion of a later round, rollout's evidence) reads its fields. The file is flat JSON with a
``schema_version``; cards written before it was recorded (ace-llamaindex 0.1, version 1) still load."""

from __future__ import annotations

import hashlib
import json
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import AceDeprecationWarning, OptionError
from ..options import value_type
from .fields import check_fields
from .gate import GATE_KINDS, GateResult, gate_verdict, unmeasured_gate
from .plan import PLAN_KINDS
from .verdict import Verdict

CARD_NAME = "ace_training_card.json"
ADAPTER_CARD = "ace_adapter.json"  # a query adapter's card, beside its weights
CARD_SCHEMA = 2  # 1: cards of ace-llamaindex 0.1, without "schema_version"; 2: this class


@dataclass(frozen=True)
class JudgedCandidate:
    """One ``--method auto`` candidate as its card records it: its gate (``GateResult.as_dict()``: against the
    champion when there was one, else the base), whether serving it embeds the documents again, and its gate against
    the base when the first one was against a champion."""

    name: str
    gate: dict[str, Any]
    reindex: bool
    against_base: dict[str, Any] | None = None

    @property
    def verdict(self) -> Verdict:
        """Its gate's verdict, read into a :class:`~ace_llamaindex.records.verdict.Verdict`."""
        return Verdict.read(self.gate["verdict"], f"candidates.{self.name}.gate.verdict")

    def gate_result(self) -> GateResult:
        """Its gate, read (:meth:`~.gate.GateResult.read`); a gate without a verdict is one
        :class:`~ace_llamaindex.errors.OptionError` line naming the candidate."""
        result = GateResult.read(self.gate, f"candidates.{self.name}.gate")
        if result is None:
            raise OptionError(f"candidates.{self.name}.gate has no verdict: a judged candidate has a gate")
        return result


@dataclass(frozen=True)
class ChampionRecord:
    """What served when a model trained, as its card's ``champion`` holds it: where it was found (``source``), the
    note on the history the run replayed, the new model against it (``gate``; None: the card has none), its
    serving plan, its identity (``serve.serving_record.plan_identity``) and the method that made it."""

    source: str | None
    history: str | None
    gate: GateResult | None
    serving: dict[str, Any] | None = None
    identity: dict[str, str | None] | None = None
    method: str | None = None

    @classmethod
    def read(cls, data: Mapping[str, Any], field: str = "champion") -> ChampionRecord:
        """The champion in a card's ``champion`` object (``TrainingCard.record_champion``); its gate is read by
        :meth:`~.gate.GateResult.read`, an unknown verdict naming ``{field}.gate.verdict``."""
        return cls(data.get("source"), data.get("history"), GateResult.read(data.get("gate"), f"{field}.gate"),
                   data.get("serving"), data.get("identity"), data.get("method"))


@dataclass
class TrainingCard:
    """What a training run did, in one record. The nested entries are plain data as the gate writes them:
    ``gate`` / ``champion["gate"]`` / ``candidates[name]["gate"]`` are ``GateResult.as_dict()``, ``serving`` a
    ``ServingPlan.to_dict()`` (``"."`` meaning the card's own folder), ``fusion`` a ``FusionChoice.to_dict()``."""

    method: str                                  # the trainer: full, adapter, auto (or a trainer plugin's name)
    gate: dict[str, Any] = field(default_factory=dict)  # the new model against its base
    promoted: bool = True                        # whether the new model was written
    chosen: str | None = None                    # auto / adapter: the candidate written ("base": none was)
    choice: dict[str, Any] | None = None         # auto: {"steps", "forced", "reason"}
    candidates: dict[str, dict[str, Any]] | None = None  # {name: {"gate", "reindex", "against_base"?}}
    gate_of: str | None = None                   # auto: the candidate ``gate`` is about (chosen, or the closest)
    base_model: str | None = None                # the model a fine-tune started from
    base: dict[str, Any] | None = None           # an adapter's base: {"label", "model", "fingerprint", ...}
    config: dict[str, Any] = field(default_factory=dict)  # the options the run used
    data_fingerprint: str | None = None
    train_examples: int | None = None
    val_examples: int | None = None
    data_checks: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    precision: str | None = None
    memory_plan: dict[str, Any] | None = None
    negatives: dict[str, Any] | None = None      # hard negatives per example, padded, in-batch only
    train_seconds: float | None = None
    peak_memory: dict[str, Any] | None = None
    resumed_from_checkpoint: str | None = None
    data_parallel: dict[str, Any] | None = None  # world size, global batch... (one process: None)
    serving: dict[str, Any] | None = None        # what the output folder serves (None: nothing, the base stays)
    fusion: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None       # what served when it trained: {"source", "serving", "identity",
    #                                              "method", "history", "gate" (the new model against it)}
    training_queries: list[str] = field(default_factory=list)   # text_hash of each training query
    validation_queries: list[str] = field(default_factory=list)
    training_data: list[dict[str, str]] = field(default_factory=list)  # [{"path", "sha256"}] for replay
    exports_skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # what one trainer alone records (learning curve,
    #                                                        the adapter's kind...), flat in the file
    schema_version: int = CARD_SCHEMA

    # -- reading ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, where: str = "training card") -> TrainingCard:
        """A card from its JSON object (any schema up to :data:`CARD_SCHEMA`); a key no field has goes to
        ``details``. A bad card is one :class:`~ace_llamaindex.errors.OptionError` line naming ``where``."""
        if isinstance(data, TrainingCard):
            return data
        if not isinstance(data, Mapping):
            raise OptionError(f"{where}: a training card is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version < 1:
            raise OptionError(f"{where}: schema_version must be a positive integer, got {version!r}")
        if version > CARD_SCHEMA:
            raise OptionError(f"{where}: card schema {version} is newer than this ace-llamaindex reads (up to "
                              f"{CARD_SCHEMA}); upgrade ace-llamaindex")
        data = dict(data)
        if "method" not in data:  # 0.1: an adapter's card had no method, a fine-tune's had its base model
            data["method"] = "full" if "base_model" in data else "adapter"
        data.pop("schema_version", None)
        values = run_fields(data)
        if isinstance(values.get("training_data"), Mapping):  # one reference, as some 0.x cards wrote it
            values["training_data"] = [dict(values["training_data"])]
        check_fields(values, _KINDS, where)
        check_fields(values, _NESTED, where)
        _check_verdicts(values, where)
        for name in ("gate", "config", "data_checks", "training_queries", "validation_queries"):
            if values.get(name) is None:
                values.pop(name, None)  # an old card's null: the default
        return cls(**values, schema_version=CARD_SCHEMA)

    @classmethod
    def read(cls, path: str | Path) -> TrainingCard:
        """The card in the file ``path``."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OptionError(f"{path}: unreadable card ({exc}); train again or delete the folder") from None
        return cls.from_dict(data, where=str(path))

    # -- writing ---------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The card as its file holds it: flat, ``schema_version`` first, optional fields left out when empty."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None or name in _ALWAYS_WRITTEN:
                out[name] = value
        clash = sorted(set(self.details) & set(out))
        if clash:
            raise ValueError(f"card details {clash} shadow card fields")
        return {**out, **self.details}

    def save(self, path: str | Path) -> Path:
        """Write the card to ``path`` atomically."""
        from ..atomic import write_json

        return write_json(path, self.to_dict())

    # -- what the stages record (each trainer fills its card through these) ------------------------------------------

    def record_gate(self, gate: GateResult | None) -> TrainingCard:
        """The new model against its base (None: no validation queries, :func:`~.gate.unmeasured_gate`)."""
        self.gate = _gate_dict(gate)
        return self

    def record_champion(self, champion: Mapping[str, Any] | None, history: str | None,
                        gate: GateResult | None) -> TrainingCard:
        """What served when it trained (``Champion.to_dict()``; None: no champion), the note on the history it
        replayed, and the new model against it (None: not measured)."""
        self.champion = None if champion is None else {**champion, "history": history, "gate": _gate_dict(gate)}
        return self

    def record_candidate(self, name: str, gate: GateResult, reindex: bool,
                         against_base: GateResult | None = None) -> TrainingCard:
        """One candidate judged (``--method auto``, several adapters): its gate, whether serving it embeds the
        documents again, and (judged against a champion) its gate against the base."""
        entry = {"gate": gate.as_dict(), "reindex": reindex}
        if against_base is not None:
            entry["against_base"] = against_base.as_dict()
        self.candidates = {**(self.candidates or {}), name: entry}
        return self

    def record_queries(self, trained: Iterable[str], validated: Iterable[str]) -> TrainingCard:
        """The queries it trained and validated on, as :func:`text_hash` es (what ``ace eval`` leaves out)."""
        self.training_queries = sorted({text_hash(q) for q in trained})
        self.validation_queries = sorted({text_hash(q) for q in validated})
        return self

    # -- what readers ask ------------------------------------------------------------------------------------------

    @property
    def method_name(self) -> str:
        """The method that produced the model: the candidate chosen, else the trainer."""
        return self.chosen or self.method

    def gate_result(self) -> GateResult | None:
        """The new model against its base, read (:meth:`~.gate.GateResult.read`: measured, unmeasured, or None
        when the card has no gate)."""
        return GateResult.read(self.gate, "gate")

    def champion_record(self) -> ChampionRecord | None:
        """What served when it trained, read (:class:`ChampionRecord`), or None: there was no champion."""
        return ChampionRecord.read(self.champion, "champion") if self.champion else None

    @property
    def deciding_gate(self) -> dict[str, Any]:
        """The comparison promotion was decided by: against the champion when there was one, else the base."""
        return (self.champion or {}).get("gate") or self.gate

    @property
    def champion_gate(self) -> dict[str, Any]:
        """The new model against the champion that served when it trained (``GateResult.as_dict()``; {}: none)."""
        return (self.champion or {}).get("gate") or {}

    @property
    def champion_identity(self) -> dict[str, str | None] | None:
        """What the champion it was compared with *is* (``serve.serving_record.plan_identity``), or None."""
        return (self.champion or {}).get("identity")

    @property
    def champion_plan(self) -> dict[str, Any] | None:
        """The serving plan of the champion it was compared with (None: it had none)."""
        return self.champion["serving"] if self.champion else None

    @property
    def seen_queries(self) -> set[str]:
        """Hashes (:func:`text_hash`) of every query the model trained or validated on."""
        return set(self.training_queries) | set(self.validation_queries)

    @property
    def base_fingerprint(self) -> str | None:
        """An adapter's base weights fingerprint (None for a fine-tune's card, or a base that has none)."""
        return (self.base or {}).get("fingerprint")

    def judged_candidates(self) -> list[JudgedCandidate]:
        """The ``--method auto`` candidates, in the order judged (none for another method)."""
        return [JudgedCandidate(name, c["gate"], c["reindex"], c.get("against_base"))
                for name, c in (self.candidates or {}).items()]

    @property
    def adapter_kind(self) -> str:
        """A query adapter's transform: ``linear`` or ``mlp``."""
        return self.details.get("kind", "linear")

    # -- the dict API of 0.1 cards, kept for callers that index a card ----------------------------------------------

    def __getitem__(self, key: str) -> Any:
        warnings.warn("indexing a training card (card[key]) is deprecated: use its attributes (card.gate, "
                      "card.chosen, card.details[...])", AceDeprecationWarning, stacklevel=2)
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Deprecated: ``card.get(key)``; use the attribute."""
        warnings.warn("card.get(key) is deprecated: use the card's attributes", AceDeprecationWarning, stacklevel=2)
        return self.to_dict().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


_ALWAYS_WRITTEN = {"serving", "fusion"}  # None says something there: nothing serves / no fusion was chosen
_FIELDS = [f.name for f in fields(TrainingCard) if f.name not in ("details", "schema_version")]  # flat in the file
# each field's type of value, from its annotation (every field's is one of fields.KIND_WORDS)
_KINDS = {name: value_type(hint) for name, hint in typing.get_type_hints(TrainingCard).items() if name in _FIELDS}


# Inside the card's objects: the entries its readers (rollout's evidence, eval --finetuned, serving) take values from
_NESTED = {"serving": PLAN_KINDS, "gate": GATE_KINDS, "base": {"label": str, "model": str, "fingerprint": str},
           "champion": {"source": str, "serving": PLAN_KINDS, "gate": GATE_KINDS}}


def _gate_dict(gate: GateResult | None) -> dict[str, Any]:
    return gate.as_dict() if gate is not None else unmeasured_gate()


def _check_verdicts(values: Mapping[str, Any], where: str) -> None:
    """Every verdict the card's gates hold is a :class:`~ace_llamaindex.records.verdict.Verdict`'s words, else one
    line naming ``where`` and the field (``gate.subsets.unseen documents.verdict``)."""
    gates = {"gate": values.get("gate"), "champion.gate": (values.get("champion") or {}).get("gate")}
    candidates = values.get("candidates") or {}
    for name, candidate in candidates.items() if isinstance(candidates, Mapping) else ():
        if isinstance(candidate, Mapping):
            gates[f"candidates.{name}.gate"] = candidate.get("gate")
            gates[f"candidates.{name}.against_base"] = candidate.get("against_base")
    for field_name, gate in gates.items():
        if not isinstance(gate, Mapping):
            continue
        gate_verdict(gate, f"{where}: field {field_name + '.verdict'!r}")
        subsets = gate.get("subsets") or {}
        for subset, comparison in subsets.items() if isinstance(subsets, Mapping) else ():
            if isinstance(comparison, Mapping):
                gate_verdict(comparison, f"{where}: field {f'{field_name}.subsets.{subset}.verdict'!r}")


def run_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """A trainer's measurements (device, seconds, learning curve...) as :class:`TrainingCard` keyword arguments:
    those the card has a field for, the rest as its ``details``."""
    return {**{k: v for k, v in info.items() if k in _FIELDS},
            "details": {k: v for k, v in info.items() if k not in _FIELDS}}


def read_card(model_dir: str | Path) -> TrainingCard | None:
    """The training card of a model (or adapter) we trained, or None."""
    for name in (CARD_NAME, ADAPTER_CARD):
        path = Path(model_dir) / name
        if path.is_file():
            return TrainingCard.read(path)
    return None


def text_hash(text: str) -> str:
    """A short, stable hash of a query's text, kept in training cards to detect train/eval overlap."""
    return hashlib.sha1(" ".join(text.split()).lower().encode("utf-8")).hexdigest()[:16]
