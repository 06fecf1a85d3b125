"""Malformed requests as one-line JSON errors: schema errors of ``GenerateRequest``, bodies too large."""
from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ditlab.serve.requests import ApiError, GenerateRequest

MAX_BODY_BYTES = 64 * 1024  # a request is a few hundred bytes; prompts are capped at 1000 characters
FIELDS = ", ".join(f.alias or name for name, f in GenerateRequest.model_fields.items())
_TYPES = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
          "list_type": "a list", "int_from_float": "an integer", "int_parsing": "an integer"}


# The request schema for the OpenAPI document (the handler reads the body itself, see parse_request).
REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": GenerateRequest.model_json_schema(by_alias=True)}}}}


def parse_request(raw: bytes) -> GenerateRequest:
    """A request body as ``GenerateRequest``, whatever its Content-Type; ApiError (400/422) when malformed."""
    if not raw.strip():
        raise ApiError(400, "the request has no JSON body: send a JSON object such as {\"class\": 3, \"num\": 4}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text: send a JSON object") from None
    except json.JSONDecodeError as err:
        raise ApiError(400, f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno}): send a JSON "
                            "object such as {\"class\": 3, \"num\": 4}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not a JSON {type(data).__name__}: send e.g. "
                            "{\"class\": 3, \"num\": 4}")
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from None


def validation_error(err: RequestValidationError | ValidationError) -> ApiError:
    """The first problem pydantic found, as an ApiError naming the field and the fix."""
    problems = err.errors()
    if not problems:
        return ApiError(422, "invalid request: send a JSON object (see GET /openapi.json)")
    first = problems[0]
    kind = first.get("type", "")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    name = loc[0] if loc else None
    if kind == "json_invalid":
        where = first.get("ctx", {}).get("error", "")
        return ApiError(400, f"malformed JSON ({where}): send a JSON object such as {{\"class\": 3, \"num\": 4}}")
    if kind == "missing" and not loc:
        return ApiError(400, "the request has no JSON body: send a JSON object such as {\"class\": 3, \"num\": 4}")
    if kind == "model_attributes_type" or (kind.endswith("_type") and not loc):
        return ApiError(400, "the body must be a JSON object, not "
                             f"{type(first.get('input')).__name__}: send e.g. {{\"class\": 3, \"num\": 4}}")
    if kind == "extra_forbidden":
        return ApiError(422, f"unknown field {name!r}: the API takes {FIELDS}", name)
    if name is not None:
        expected = _expected(name, problems)
        got = json.dumps(first.get("input"))[:60]
        return ApiError(422, f"{name} must be {expected}, got {got}: fix its type", name)
    return ApiError(422, f"invalid request ({first.get('msg')}): see GET /openapi.json")


def _expected(name: str, problems: list[dict[str, Any]]) -> str:
    """'an integer', 'an integer or a string or a list' ... from the errors of one field (one per union member)."""
    kinds = []
    for p in problems:
        if [str(part) for part in p.get("loc", ()) if part != "body"][:1] == [name]:
            what = _TYPES.get(p.get("type", ""))
            if what and what not in kinds:
                kinds.append(what)
    if name == "class":
        return "a label, a class name or a list of them"
    if name == "prompt":
        return "a string or a list of strings"
    return " or ".join(kinds) or "of another type"


class BodyLimit:
    """ASGI middleware: bodies over ``MAX_BODY_BYTES`` get HTTP 413 before they are read into memory."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return await _too_large(send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _too_large(send)


class _TooLarge(Exception):
    pass


async def _too_large(send) -> None:
    body = json.dumps(ApiError(413, f"the request body is over {MAX_BODY_BYTES // 1024} KiB: send a small JSON "
                                    "object").to_dict()).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
