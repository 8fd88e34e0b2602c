"""One OpenAI-compatible chat-completions endpoint: its URL, its key header, and POSTs with bounded retries.

The same client reaches OpenAI, Azure OpenAI (a deployment URL with an
``api-version`` query and an ``api-key`` header, or the v1 surface at
``{endpoint}/openai/v1``), vLLM, llama.cpp server and Ollama. It is plain
``urllib`` rather than the ``openai`` SDK so that every failure a user can
cause becomes one line naming the URL (never the key), and so that retries
are bounded and visible: HTTP 429 and 5xx are retried ``max_retries`` times,
waiting what ``Retry-After`` asks (at most a minute) or ``retry_wait``
seconds doubled per try; anything else fails at once.

The key is read from the environment variable the user names and lives only
in the request headers: :class:`Endpoint`'s ``repr`` leaves them out.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from ..errors import DpoPluginsError

RETRIED_STATUSES = (429, 500, 502, 503, 504)
LONGEST_WAIT = 60.0


class ContentFiltered(DpoPluginsError):
    """HTTP 400 with ``error.code`` ``content_filter``: Azure's filter refused the prompt itself (not a broken call)."""


@dataclass(frozen=True)
class Endpoint:
    """Where to POST and how; ``who`` prefixes every error (e.g. ``judge 'alpaca-eval'``)."""

    url: str
    who: str
    timeout: float = 60.0
    max_retries: int = 5
    retry_wait: float = 2.0
    key_env: str | None = None
    headers: dict = field(default_factory=dict, repr=False)


def endpoint(who: str, base_url: str, api_key_env: str | None = "OPENAI_API_KEY", api_key_header: str | None = None,
             azure_deployment: str | None = None, api_version: str | None = None, timeout: float = 60.0,
             max_retries: int = 5, retry_wait: float = 2.0) -> Endpoint:
    """The chat-completions endpoint under ``base_url``.

    ``base_url`` is the part before ``/chat/completions`` (``https://api.openai.com/v1``,
    ``http://localhost:8000/v1``, ``https://NAME.openai.azure.com/openai/v1``); with
    ``azure_deployment`` it is the Azure resource (``https://NAME.openai.azure.com``) and the URL
    becomes ``{base_url}/openai/deployments/{azure_deployment}/chat/completions?api-version={api_version}``.
    The key goes in ``api_key_header``: ``Authorization`` sends ``Bearer KEY``, any other header the
    bare key; by default ``api-key`` for a deployment URL, else ``Authorization``.
    """
    problems = []
    parsed = urllib.parse.urlsplit(str(base_url or ""))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        problems.append(f"{who}: base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, not {base_url!r}")
    if azure_deployment and not api_version:
        problems.append(f"{who}: an Azure deployment needs api_version (--judge-param api_version=...)")
    problems += [f"{who}: {name} must be {kind}, not {value!r}" for name, value, kind, ok in (
        ("timeout", timeout, "a number of seconds above 0", is_number(timeout) and timeout > 0),
        ("max_retries", max_retries, "a whole number at least 0", is_number(max_retries, int) and max_retries >= 0),
        ("retry_wait", retry_wait, "a number of seconds at least 0", is_number(retry_wait) and retry_wait >= 0),
    ) if not ok]
    if problems:
        raise DpoPluginsError("\n".join(problems))
    root = str(base_url).rstrip("/")
    url = f"{root}/chat/completions"
    if azure_deployment:
        url = f"{root}/openai/deployments/{urllib.parse.quote(str(azure_deployment), safe='')}/chat/completions"
    if api_version:
        url += "?" + urllib.parse.urlencode({"api-version": str(api_version)})
    header = api_key_header or ("api-key" if azure_deployment else "Authorization")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(str(api_key_env), "") if api_key_env else ""
    if key:
        headers[str(header)] = f"Bearer {key}" if str(header).lower() == "authorization" else key
    return Endpoint(url=url, who=who, timeout=float(timeout), max_retries=int(max_retries),
                    retry_wait=float(retry_wait), key_env=str(api_key_env) if api_key_env else None, headers=headers)


def is_number(value, kind=(int, float)) -> bool:
    """A real number of ``kind`` (JSON gives ints and floats; a bool is neither)."""
    return isinstance(value, kind) and not isinstance(value, bool) and value == value


def post_chat(target: Endpoint, body: dict, sleep=time.sleep) -> dict:
    """The endpoint's JSON answer to ``body``, retrying 429 and 5xx at most ``max_retries`` times."""
    data = json.dumps(body).encode("utf-8")
    for attempt in range(target.max_retries + 1):
        request = urllib.request.Request(target.url, data=data, headers=target.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=target.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            detail = " ".join(body.split())[:300]
            if error.code == 400 and _error_code(body) == "content_filter":
                raise ContentFiltered(f"{target.who}: {target.url} filtered the prompt: {detail}") from None
            if error.code in RETRIED_STATUSES and attempt < target.max_retries:
                sleep(_wait(error.headers.get("Retry-After"), target.retry_wait, attempt))
                continue
            tries = f" after {attempt + 1} tries" if attempt else ""
            hint = ""
            if error.code in (401, 403):
                hint = (f" (the key is read from ${target.key_env}; is it set?)" if target.key_env
                        else " (no key sent: set api_key_env)")
            raise DpoPluginsError(f"{target.who}: {target.url} returned HTTP {error.code}{tries}{hint}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DpoPluginsError(f"{target.who}: cannot reach {target.url}: {reason}") from None
        try:
            answer = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DpoPluginsError(f"{target.who}: {target.url} did not answer JSON: {error}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"] \
                or not isinstance(answer["choices"][0], dict):
            raise DpoPluginsError(f"{target.who}: {target.url} answered without choices: {json.dumps(answer)[:200]}")
        return answer
    raise AssertionError("unreachable: the last attempt returns or raises")


def _error_code(body: str):
    """``error.code`` of an OpenAI-style error body, if it has one."""
    try:
        error = json.loads(body).get("error")
    except (json.JSONDecodeError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def _wait(retry_after: str | None, retry_wait: float, attempt: int) -> float:
    """``Retry-After`` seconds when the server gives a number, else ``retry_wait`` doubled per try (capped)."""
    try:
        asked = float(retry_after) if retry_after is not None else None
    except ValueError:
        asked = None
    if asked is not None and asked >= 0:
        return min(asked, LONGEST_WAIT)
    return min(retry_wait * 2 ** attempt, LONGEST_WAIT)
