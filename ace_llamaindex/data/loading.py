"""Load a dataset by path, in any registered format (auto-detected unless named)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..plugins.manager import components, get
from .dataset import QADataset, refuse_blemishes

DATA = Path(__file__).parent  # the shipped datasets live beside this module
DEMO_DATASET = DATA / "team_memories.json"     # the demo: a team's vocabulary (scripts/make_team_dataset.py)
SMALL_DATASET = DATA / "agent_memories.json"   # a small hand-written set: the tests' fast fixture


def load_dataset(path: str | Path | None = None, fmt: str | None = None, strict: bool = False, **options: Any) -> QADataset:
    """Read ``path`` (default: the shipped demo dataset) with the loader named ``fmt`` or the first that fits.

    Empty documents, qrels pointing at them and queries left without a relevant document are dropped and counted
    (``dataset.dropped``); ``strict=True`` refuses such a dataset instead. ``options`` go to the loader (BEIR
    takes ``split``).
    """
    path = Path(path) if path else DEMO_DATASET
    if not path.exists():
        raise DatasetError(path, "path", "does not exist")
    if fmt:
        dataset = get("loaders", fmt).load(path, **options)
    else:
        for component in components("loaders").values():
            if component.obj.sniff(path):
                dataset = component.obj.load(path, **options)
                break
        else:
            _refuse_non_utf8(path)
            raise DatasetError(path, "format", f"not recognised; expected one of {', '.join(components('loaders'))} (pass --format)")
    _refuse_invalid_unicode(path, dataset)
    if strict:
        refuse_blemishes(dataset)
    return dataset


def _refuse_invalid_unicode(path: Path, dataset: QADataset) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``), which are no text: every later step that encodes them fails."""
    for field, table in (("queries", dataset.queries), ("corpus", dataset.corpus)):
        for key, text in table.items():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DatasetError(path, f"{field}[{key!r}]", f"has a lone surrogate at character {exc.start} "
                                   "(not valid Unicode text; fix or remove it)") from None


def _refuse_non_utf8(path: Path) -> None:
    """A file (or a BEIR folder's files) that is not UTF-8 is named as such, not as an unknown format."""
    files = [path] if path.is_file() else [path / "corpus.jsonl", path / "queries.jsonl"]
    for file in files:
        if file.is_file():
            try:
                file.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(file, f"byte {exc.start}", "is not UTF-8 text (save the file as UTF-8)") from None
