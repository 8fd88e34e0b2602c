"""JSON in and out of files without orjson's two silent changes.

orjson (the fast path for every row) reads an integer beyond 64 bits as a
float — ``184467440737095516160`` comes back as ``1.8446744073709552e+20`` —
and refuses to write one. :func:`loads` and :func:`dumps` take orjson's
result whenever it is exact and fall back to the standard library, which
keeps integers of any size, only for the rare row that holds a 20-digit
number (found with one ``bytes.translate`` pass, ~3x faster than orjson's
parse, where a regular expression would halve the conversion speed).

:func:`duplicate_keys` finds what orjson (and the standard library) hide: a
key written twice in one object, where the last value silently wins. Every
key is a string followed by ``:``, so when the raw text has no more
``"<spaces>:`` than the parsed value has keys (counted in orjson's own
compact dump of it), no key was repeated: the common case costs a dump and
two C-speed counts. Only otherwise is the text parsed again, with a hook
that sees every key.

:func:`strip_bom` removes a UTF-8 byte-order mark only when all three of
its bytes are there: ``bytes.lstrip(BOM)`` strips *any* of them, so a file
starting with ``\\xbb`` would be read as if it were clean.
"""

from __future__ import annotations

import json
import re
from typing import Union

import orjson

BOM = b"\xef\xbb\xbf"
_DIGITS = bytes(ord("0") if chr(byte).isdigit() and byte < 128 else ord(" ") for byte in range(256))
_BEYOND_64_BITS = b"0" * 20  # 2**64 has 20 digits; every integer orjson cannot hold has at least as many


def loads(raw: bytes):
    """``orjson.loads(raw)``, with integers beyond 64 bits kept exact."""
    value = orjson.loads(raw)
    if _BEYOND_64_BITS not in raw.translate(_DIGITS):
        return value
    try:
        return json.loads(raw)  # orjson accepted it, so it is strict JSON: no NaN, no lone surrogate
    except RecursionError:  # deeper than the standard parser goes: refused as too deep downstream
        return value


def dumps(value) -> bytes:
    """``orjson.dumps(value)``; the standard library writes integers beyond 64 bits."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        if "64-bit" not in str(error):
            raise
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def strip_bom(raw: bytes) -> bytes:
    """``raw`` without a leading UTF-8 BOM (all three bytes, or nothing)."""
    return raw[len(BOM):] if raw.startswith(BOM) else raw


_KEY_END = re.compile(rb'"\s*:')  # every key ends so; a string value holds it only after an escaped quote
_SPACED_KEY_END = re.compile(rb'"\s+:')


def duplicate_keys(raw: bytes, value) -> list[tuple[tuple[Union[str, int], ...], str]]:
    """Each key written twice in one object of ``raw`` (whose parse is ``value``), as ``(path, key)``.

    ``path`` leads to the object holding the key (a tuple of keys and list
    indexes, ``()`` for the top). Empty when no key is repeated.
    """
    try:
        dumped = dumps(value)  # one key per `":` unless a string holds a quote (escaped, `\"`)
    except TypeError:  # deeper than orjson writes (refused as too deep downstream): count by walking
        dumped = b'\\"'
    keys = dumped.count(b'":') if b'\\"' not in dumped else _count_keys(value)
    if raw.count(b'":') <= keys and not _SPACED_KEY_END.search(raw):
        return []
    if len(_KEY_END.findall(raw)) <= keys:
        return []
    try:
        marked = json.loads(raw, object_pairs_hook=_RepeatedKeys.from_pairs)
    except (RecursionError, ValueError):  # deeper than the standard parser goes: refused as too deep downstream
        return []
    found = []
    stack = [((), marked)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _RepeatedKeys):
            found += [(path, key) for key in item.repeated]
        if isinstance(item, dict):
            stack += [(path + (key,), child) for key, child in item.items()]
        elif isinstance(item, list):
            stack += [(path + (index,), child) for index, child in enumerate(item)]
    return sorted(found, key=lambda found: [str(part) for part in found[0]])


def _count_keys(value) -> int:
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack += [child for child in item.values() if isinstance(child, (dict, list))]
        elif isinstance(item, list):
            stack += [child for child in item if isinstance(child, (dict, list))]
    return count


class _RepeatedKeys(dict):
    """A JSON object that names the keys it held more than once."""

    repeated: list

    @classmethod
    def from_pairs(cls, pairs):
        made = cls(pairs)
        seen = set()
        made.repeated = list(dict.fromkeys(key for key, _ in pairs if key in seen or seen.add(key)))
        return made
