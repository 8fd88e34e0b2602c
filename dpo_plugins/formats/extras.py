"""Where a row's extra fields go, so that none can overwrite the pair.

A source row's fields beyond its schema (ids, scores, ...) travel as the
record's ``metadata``. A target writes each one as a top-level field of its
own, except a field whose name is one of the target's schema keys (an
Azure row's extra ``"chosen"`` written as HH, whose pair *is* ``chosen`` /
``rejected``) or a key that would make the row look like another format
(a top-level ``prompt`` in HH): such fields go, under their own names, into
one object at the reserved key :data:`NAMESPACE`. Reading any built-in format unpacks
that object back into the metadata, so ``azure -> hh -> azure`` returns the
extra ``"chosen"`` where it was. ``docs/formats.md`` documents the key.
"""

from __future__ import annotations

from typing import Iterable

from ..records import Problem, RecordError

NAMESPACE = "dpo_metadata"


def extra_fields(row: dict, schema_keys: Iterable[str]) -> dict:
    """The fields of ``row`` outside ``schema_keys``, with :data:`NAMESPACE` unpacked."""
    metadata = {key: value for key, value in row.items() if key not in schema_keys}
    if NAMESPACE not in metadata:
        return metadata
    nested = metadata.pop(NAMESPACE)
    if not isinstance(nested, dict):
        raise RecordError([Problem(NAMESPACE, "must be an object (the reserved field for extra fields whose "
                                              "names collide with the format's own)", "metadata")])
    twice = [key for key in nested if key in metadata]
    if twice:
        raise RecordError([Problem(f"{NAMESPACE}.{key}", "is also a top-level field: which one is meant is unclear",
                                   "metadata") for key in twice])
    metadata.update(nested)
    return metadata


def with_extras(row: dict, metadata: dict, schema_keys: Iterable[str]) -> dict:
    """``row`` plus ``metadata``: colliding names under :data:`NAMESPACE`, never over the pair."""
    if not metadata:
        return row
    nested = {}
    for key, value in metadata.items():
        if key in schema_keys or key in row or key == NAMESPACE:
            nested[key] = value
        else:
            row[key] = value
    if nested:
        row[NAMESPACE] = nested
    return row
