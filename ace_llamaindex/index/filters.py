"""Translate LlamaIndex ``MetadataFilters`` into a Qdrant ``Filter`` (payload keys are node metadata keys)."""

from __future__ import annotations

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
from qdrant_client import models

from ..errors import OptionError

_RANGE = {FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}


def _condition(f: MetadataFilter | MetadataFilters) -> models.Condition:
    if isinstance(f, MetadataFilters):
        return to_qdrant_filter(f)
    if f.operator == FilterOperator.EQ and isinstance(f.value, float):  # Qdrant matches ints/strings/bools only
        return models.FieldCondition(key=f.key, range=models.Range(gte=f.value, lte=f.value))
    if f.operator == FilterOperator.NE and isinstance(f.value, float):
        return models.Filter(must_not=[models.FieldCondition(key=f.key, range=models.Range(gte=f.value, lte=f.value))])
    if f.operator == FilterOperator.EQ:
        return models.FieldCondition(key=f.key, match=models.MatchValue(value=f.value))
    if f.operator == FilterOperator.IS_EMPTY:
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=f.key))
    if f.operator in (FilterOperator.ANY, FilterOperator.CONTAINS):
        values = list(f.value) if isinstance(f.value, list) else [f.value]
        return models.FieldCondition(key=f.key, match=models.MatchAny(any=values))
    if f.operator in (FilterOperator.IN, FilterOperator.NIN) and not isinstance(f.value, (list, tuple)):
        # a scalar (list(5) fails deep in the call; list("ab") would silently match 'a' or 'b')
        raise OptionError(f"metadata filter on {f.key!r} with operator {f.operator.value!r} expects a list of values, got "
                          f"{type(f.value).__name__} {f.value!r} (e.g. MetadataFilter(key={f.key!r}, value=[{f.value!r}], "
                          f"operator=FilterOperator.{f.operator.name}), or operator "
                          f"{'==' if f.operator == FilterOperator.IN else '!='!r} for one value)")
    if f.operator == FilterOperator.IN:
        return models.FieldCondition(key=f.key, match=models.MatchAny(any=list(f.value)))
    if f.operator == FilterOperator.NIN:
        return models.FieldCondition(key=f.key, match=models.MatchExcept(**{"except": list(f.value)}))
    if f.operator == FilterOperator.NE:
        return models.Filter(must_not=[models.FieldCondition(key=f.key, match=models.MatchValue(value=f.value))])
    if f.operator in _RANGE:
        return models.FieldCondition(key=f.key, range=models.Range(**{_RANGE[f.operator]: f.value}))
    if f.operator in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        # Qdrant's text match lower-cases both sides when the field has a full-text index; without one it is a
        # substring match, so the insensitive variant lower-cases the value and relies on lower-case payloads.
        text = f.value.lower() if f.operator == FilterOperator.TEXT_MATCH_INSENSITIVE else f.value
        return models.FieldCondition(key=f.key, match=models.MatchText(text=text))
    raise OptionError(f"metadata filter operator {f.operator!r} on {f.key!r} is not supported; use ==, !=, in, nin, any, "
                      "contains, >, >=, <, <=, text_match, text_match_insensitive, is_empty")


def to_qdrant_filter(filters: MetadataFilters | None) -> models.Filter | None:
    """AND / OR / NOT of the filters, nested ``MetadataFilters`` included."""
    if filters is None:
        return None
    if not isinstance(filters, MetadataFilters):
        raise OptionError(f"filters must be llama_index MetadataFilters, got {type(filters).__name__} "
                          "(e.g. MetadataFilters(filters=[MetadataFilter(key='category', value='debugging')]))")
    if not filters.filters:
        return None
    conditions = [_condition(f) for f in filters.filters]
    if filters.condition == FilterCondition.OR:
        return models.Filter(should=conditions)
    if filters.condition == FilterCondition.NOT:
        return models.Filter(must_not=conditions)
    return models.Filter(must=conditions)
