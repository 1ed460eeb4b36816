"""The sync endpoint described in OpenAPI 3.1, served at ``GET {base}/openapi.json``.

Generated from the same constants the endpoint enforces (limits, hints, modes, error codes),
so the description cannot drift from the validation. Client generators and API fuzzers
(schemathesis) can start from it.
"""

from __future__ import annotations

from typing import Any

from .protocol import HINTS, MAX_VERSION, MODES, PROBLEM_TYPE_BASE, Limits

#: Every problem ``code`` the endpoint can answer, by HTTP status.
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("malformed_json", "invalid_body", "invalid_known", "invalid_key", "invalid_version",
          "bad_content_length"),
    403: ("forbidden",),
    405: ("method_not_allowed",),
    408: ("body_timeout",),
    413: ("body_too_large", "too_many_keys"),
    415: ("unsupported_media_type",),
    500: ("internal",),
    503: ("store_unavailable", "store_not_ready", "overloaded"),
}


def openapi_document(base: str = "/reality", limits: Limits | None = None) -> dict[str, Any]:
    """The OpenAPI description of ``POST {base}/sync`` and ``GET {base}/health``."""
    limits = limits or Limits()
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    errors = {
        str(status): {
            "description": ", ".join(codes),
            "content": {"application/problem+json": {"schema": problem_ref}},
            **({"headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}}
               if status == 503 else {}),
        }
        for status, codes in ERROR_CODES.items()
    }
    key = {"type": "string", "minLength": 1, "maxLength": limits.max_key_length,
           "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Reality sync endpoint",
            "version": "1",
            "description": "Clients send the versions of the keys they know and learn which "
                           "changed. Read-only: no endpoint changes a version.",
        },
        "paths": {
            f"{base}/sync": {"post": {
                "operationId": "sync",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SyncRequest"}}}},
                "responses": {
                    "200": {"description": "the keys whose version differs from the client's",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/SyncResponse"}}}},
                    **errors,
                },
            }},
            f"{base}/health": {"get": {
                "operationId": "health",
                "responses": {
                    "200": {"description": "the version store answers",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "503": {"description": "the version store does not answer, or is not ready",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                },
            }},
        },
        "components": {"schemas": {
            "SyncRequest": {
                "type": "object",
                "required": ["known"],
                "properties": {
                    "known": {
                        "type": "object",
                        "maxProperties": limits.max_keys,
                        "propertyNames": key,
                        "additionalProperties": {"type": "integer", "minimum": 0,
                                                 "maximum": MAX_VERSION},
                    },
                    "clientId": {"type": "string"},
                    "mode": {"enum": sorted(MODES)},
                    "hint": {"enum": sorted(HINTS)},
                    "timestamp": {},
                },
            },
            "VersionInfo": {
                "type": "object",
                "required": ["key", "version", "hash", "updatedAt"],
                "properties": {"key": {"type": "string"},
                               "version": {"type": "integer", "minimum": 0},
                               "hash": {"type": "string"},
                               "updatedAt": {"type": "integer", "minimum": 0}},
            },
            "SyncResponse": {
                "type": "object",
                "required": ["changed", "serverTime", "epoch"],
                "properties": {
                    "changed": {"type": "object",
                                "additionalProperties": {
                                    "$ref": "#/components/schemas/VersionInfo"}},
                    "serverTime": {"type": "integer"},
                    "epoch": {"type": "string"},
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "code", "detail"],
                "properties": {
                    "type": {"type": "string", "format": "uri",
                             "pattern": f"^{PROBLEM_TYPE_BASE}"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "code": {"enum": sorted({c for cs in ERROR_CODES.values() for c in cs})},
                    "detail": {"type": "string"},
                },
            },
        }},
    }
