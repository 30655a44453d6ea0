"""The embedding endpoint a command encodes with, declared once: ``ace train`` (``--base-url``...) and ``ace eval``
(``--baseline``, ``--baseline-url``...) name its model and URL their own way and share ``--query-prefix`` /
``--document-prefix``; the command receives one :class:`Endpoint` (issue #39: no command takes each flag apart)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import click

PREFIX_OPTIONS = [
    click.option("--query-prefix", "endpoint_query_prefix", default="",
                 help="Prefix for endpoint queries (nomic: 'search_query: ')."),
    click.option("--document-prefix", "endpoint_document_prefix", default="",
                 help="Prefix for endpoint documents (nomic: 'search_document: ')."),
]
FIELDS = {"model": "endpoint_model", "url": "endpoint_url", "model_name": "endpoint_model_name",
          "query_prefix": "endpoint_query_prefix", "document_prefix": "endpoint_document_prefix"}


@dataclass(frozen=True)
class Endpoint:
    """An embedding model given on the command line: a local sentence-transformers ``model`` (None: the bundled
    base), or an OpenAI-compatible endpoint at ``url`` serving ``model_name``, whose queries and documents get
    ``query_prefix`` / ``document_prefix``."""

    model: str | None = None
    url: str | None = None
    model_name: str | None = None
    query_prefix: str = ""
    document_prefix: str = ""

    def encoder(self):
        """The encoder: the endpoint's when a URL is given, else the local model's."""
        from .embeddings.encoding import CachedEncoder, LlamaIndexEncoder
        from .serve.http_embedding import OpenAICompatibleEmbedding

        if self.url:
            client = OpenAICompatibleEmbedding(base_url=self.url, model_name=self.model_name or "text-embedding",
                                               query_prefix=self.query_prefix, document_prefix=self.document_prefix)
            return LlamaIndexEncoder(client, label=f"{self.url}#{client.model_name}")
        return CachedEncoder(self.model)


def endpoint_options(*, url: tuple[str, str], model_name: tuple[str, str], model: tuple[str, str] | None = None):
    """A decorator giving a command the endpoint's options, in this order: ``model`` (a local model's flag and help,
    when the command takes one), ``url``, ``model_name`` (each a flag and its help), then ``--query-prefix`` and
    ``--document-prefix``. The command receives them as one ``endpoint`` (:class:`Endpoint`)."""
    named = [(model, FIELDS["model"]), (url, FIELDS["url"]), (model_name, FIELDS["model_name"])]
    options = [click.option(given[0], dest, default=None, help=given[1]) for given, dest in named if given]
    options += PREFIX_OPTIONS

    def apply(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            given = {name: kwargs.pop(dest) for name, dest in FIELDS.items() if dest in kwargs}
            return f(*args, endpoint=Endpoint(**given), **kwargs)

        for opt in reversed(options):
            wrapper = opt(wrapper)
        return wrapper

    return apply
