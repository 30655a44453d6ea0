"""Vector spaces: which named vector an embedding's documents live in, and which space a query was embedded in
(after a fallback, the baseline's). The retriever and the vector store both search by these rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

from llama_index.core.base.embeddings.base import BaseEmbedding

from ..embeddings.models import vector_name
from ..errors import OptionError
from ..index.fusion_choice import DENSE_DEFAULT, FUSION_FILE, FusionChoice, load_fusion
from .embedding import space_label


@runtime_checkable
class SpaceAwareEmbedding(Protocol):
    """An embedding that may answer in more than one vector space and says which one each query vector is in:
    :class:`~ace_llamaindex.FineTunedEmbedding` (the fine-tuned model, or its fallback's space after a failure) and
    :class:`~ace_llamaindex.AdapterEmbedding` (its base's spaces). Any other ``BaseEmbedding`` is one space, named
    from its model."""

    def spaces(self) -> list[tuple[str, BaseEmbedding]]:
        """(label, model) for every space it may answer in, its own first."""

    def named_vector(self, label: str) -> str:
        """The Qdrant named vector holding documents of the space ``label``."""

    def embed_query_with_space(self, query: str) -> tuple[list[float], str]:
        """The query vector and the label of the space it is in."""

    async def aembed_query_with_space(self, query: str) -> tuple[list[float], str]:
        """The same, asynchronously."""


def embedding_spaces(embed_model: BaseEmbedding) -> list[tuple[str, BaseEmbedding]]:
    """(label, model) for each vector space the embedding may answer in; one for a plain embedding."""
    return embed_model.spaces() if isinstance(embed_model, SpaceAwareEmbedding) else [(space_label(embed_model), embed_model)]


def named_vector(embed_model: BaseEmbedding, label: str) -> str:
    """The Qdrant named vector holding documents of the space ``label`` (a space-aware embedding names its own)."""
    return embed_model.named_vector(label) if isinstance(embed_model, SpaceAwareEmbedding) else vector_name(label)


def query_with_space(embed_model: BaseEmbedding, query: str) -> tuple[list[float], str]:
    """The query vector and the label of the space it is in."""
    if isinstance(embed_model, SpaceAwareEmbedding):
        return embed_model.embed_query_with_space(query)
    return embed_model.get_query_embedding(query), space_label(embed_model)


async def aquery_with_space(embed_model: BaseEmbedding, query: str) -> tuple[list[float], str]:
    """:func:`query_with_space`, asynchronously."""
    if isinstance(embed_model, SpaceAwareEmbedding):
        return await embed_model.aembed_query_with_space(query)
    return await embed_model.aget_query_embedding(query), space_label(embed_model)


def model_folder(embed_model: BaseEmbedding) -> str | None:
    """The local folder an embedding's model lives in, if any (where ``fusion.json`` is looked for)."""
    for attr in ("model_path", "model_name", "model_dir"):
        value = getattr(embed_model, attr, None)
        if isinstance(value, str) and Path(value).is_dir():
            return value
    base = getattr(embed_model, "base", None)  # an AdapterEmbedding searches its base's space
    return model_folder(base) if isinstance(base, BaseEmbedding) else None


def resolve_fusion(embed_model: BaseEmbedding, fusion: str | FusionChoice | None) -> FusionChoice:
    """``"auto"``: the fusion saved with the model (``fusion.json``), else dense (which never loses to dense);
    a path to a ``fusion.json`` or a model folder; or a :class:`FusionChoice`."""
    if isinstance(fusion, FusionChoice):
        return fusion
    if fusion in (None, "auto"):
        return load_fusion(model_folder(embed_model)) or DENSE_DEFAULT
    path = Path(fusion)
    if path.is_file():
        return load_fusion(path.parent) if path.name == FUSION_FILE else FusionChoice.from_dict(json.loads(path.read_text()), str(path))
    choice = load_fusion(path)
    if choice is None:
        raise OptionError(f"fusion={fusion!r}: expected 'auto', a FusionChoice, or a model folder / file with {FUSION_FILE}")
    return choice
