"""The few top-level fields of a Messages request that admission prices (model, max_tokens,
stream), validated with errors that name the field. Pure.
"""

from __future__ import annotations

import simdjson

from proxy.core.errors import InvalidRequest
from proxy.core.ids import MODEL_ID, model_error
from proxy.core.validate import parse_object

MAX_TOKENS_LIMIT = 1_000_000

REQUEST_FIELDS = ("model", "max_tokens", "stream")
LAZY_PARSE_FROM = 64 * 1024
_NESTED = object()  # a field that holds an object or array: never a valid value here
# One parser per process, reused: its buffers stay allocated, so a large body does not pay
# for fresh memory (page faults) on every parse. Safe on one event loop: parsing is
# synchronous and nothing of the document outlives request_fields. Above this size a parser
# of its own, so that a rare huge body does not stay resident.
REUSE_PARSER_UP_TO = 16 * 1024 * 1024
_PARSER = simdjson.Parser()


def request_fields(body: bytes) -> dict[str, object]:
    """The top-level fields admission needs, from a body that must be one valid JSON object.

    Claude Code sends long contexts: a full parse of an 8 MiB body costs ~10 ms, so large
    bodies go through simdjson, which validates the whole document but builds only what is
    read (~3 ms). A field given twice is refused: the upstream might read another copy than
    the one the reservation was priced from.
    """
    if len(body) < LAZY_PARSE_FROM:
        doc = parse_object(body)
        return {k: doc[k] for k in REQUEST_FIELDS if k in doc}
    parser = _PARSER if len(body) <= REUSE_PARSER_UP_TO else simdjson.Parser()
    try:
        lazy = parser.parse(body)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    except RuntimeError as exc:  # simdjson's DEPTH_ERROR (and its other document errors)
        reason = "nested too deep" if "DEPTH" in str(exc) else "not a document simdjson reads"
        raise InvalidRequest(f"request body is not valid JSON: {reason}") from exc
    try:
        if not isinstance(lazy, simdjson.Object):
            raise InvalidRequest("request body must be a JSON object")
        keys = [k for k in lazy if k in REQUEST_FIELDS]
        if len(keys) != len(set(keys)):
            raise InvalidRequest(
                "request body has a field more than once: "
                + ", ".join(sorted({k for k in keys if keys.count(k) > 1}))
            )
        out: dict[str, object] = {}
        for k in keys:
            value = lazy[k]
            nested = isinstance(value, simdjson.Object | simdjson.Array)
            out[k] = _NESTED if nested else value
            del value  # no reference into the document may outlive this call
        return out
    finally:
        del lazy


def parse_message_request(body: bytes) -> tuple[str, int, bool]:
    """(model, max_tokens, stream) of a Messages request, or a 400 that says what is wrong."""
    doc = request_fields(body)
    model = doc.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest('model: field required (a model id such as "claude-sonnet-4-5")')
    if not MODEL_ID.match(model):
        raise InvalidRequest(model_error(model))
    max_tokens = doc.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidRequest("max_tokens: must be an integer")
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidRequest(
            f"max_tokens: must be between 1 and {MAX_TOKENS_LIMIT} (got {max_tokens})"
        )
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be true or false")
    return model, max_tokens, stream
