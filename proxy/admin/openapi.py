"""The OpenAPI 3 document of the admin API, served at ``GET /admin/openapi.json``.

Written by hand, apart from the route rule names it lists (docs/admin.md, "The OpenAPI
document", says why): tests/integration/test_admin_openapi.py checks that every registered
admin route is in it and every operation in it is registered, and runs schemathesis
against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from ..state import PROCESSOR, home

_ERROR = {"$ref": "#/components/responses/Error"}
_REFUSED = {
    "400": _ERROR,
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}
_TENANT = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _lookup(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _query(
            "key",
            "The 64-hex cache key (the X-Audio-Cache-Key response header). Or describe the "
            "request with the parameters below.",
            {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        ),
        _query("route", "Route rule name (openai, elevenlabs, marytts, coqui, ... )", route),
        _query("body", "The request body a client would send, as text (JSON, or form fields)"),
        _query("query", "The query string a client would send (GET-style routes)"),
        _query("path", "The request path, for routes with path parameters"),
        _query("headers", "JSON object of request headers that change the audio"),
        _query("tenant", "Tenant whose namespace the entry is in", _TENANT),
    ]


_COUNT = {
    "type": "object",
    "required": ["deleted", "bytes_freed"],
    "properties": {
        "deleted": {"type": "integer", "minimum": 0},
        "bytes_freed": {"type": "integer", "minimum": 0},
        "tenant": {"type": "string"},
        "selector": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _description(route: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["route"],
        "anyOf": [
            {"required": ["text"]},
            {"required": ["body"]},
            {"required": ["query"]},
            {"required": ["params"]},
        ],
        "additionalProperties": False,
        "properties": {
            "route": {**route, "description": "Route rule name"},
            "body": {
                "description": "The body a client would send (JSON object, or its text)",
                "oneOf": [{"type": "object"}, {"type": "string"}],
            },
            "query": {"oneOf": [{"type": "object"}, {"type": "string"}]},
            "path": {"type": "string"},
            "path_params": {"type": "object", "additionalProperties": {"type": "string"}},
            "text": {
                "type": "string",
                "minLength": 1,
                "description": "The text, placed where the route's request holds it "
                "(nested, e.g. Google's input.text); with params instead of body",
            },
            "params": {
                "type": "object",
                "description": "The rest of the request beside the text (or holding the "
                "route's SSML field, without text)",
            },
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "content_type": {"type": "string", "pattern": "^[a-z0-9_][a-z0-9_.-]{0,63}$"},
            "tenant": _TENANT,
            "keep_warm": {"type": "boolean"},
        },
    }


_JOB = {
    "type": "object",
    "required": ["job", "state", "total", "done", "results", "upstream_calls", "errors"],
    "properties": {
        "job": {"type": "string"},
        "source": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "done", "stopped"]},
        "total": {"type": "integer"},
        "done": {"type": "integer"},
        "results": {"type": "object", "additionalProperties": {"type": "integer"}},
        "upstream_calls": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "started_ms": {"type": "integer"},
        "finished_ms": {"type": ["integer", "null"]},
    },
}

_ENTRY = {
    "type": "object",
    "required": ["key", "size", "stored_size", "codec", "ttl_seconds", "hits", "content_type"],
    "properties": {
        "key": {"type": "string"},
        "size": {"type": "integer"},
        "stored_size": {"type": "integer"},
        "codec": {"type": "string"},
        "media_type": {"type": "string"},
        "created_ms": {"type": "integer"},
        "expires_ms": {"type": "integer"},
        "ttl_seconds": {"type": "number"},
        "hits": {"type": "integer"},
        "last_access_ms": {"type": "integer"},
        "content_type": {"type": "string"},
        "tenant": {"type": "string"},
        "route": {"type": "string"},
        "voice": {"type": "string"},
        "model": {"type": "string"},
    },
}

_STATS = {
    "type": "object",
    "required": [
        "entries",
        "size",
        "requests",
        "content_types",
        "tenants",
        "cleanup",
        "compression",
    ],
    "properties": {
        "enabled": {"type": "boolean"},
        "entries": {"type": "integer"},
        "size": {"type": "object"},
        "requests": {"type": "object"},
        "content_types": {"type": "object"},
        "tenants": {"type": "object"},
        "removals": {"type": "object"},
        "cleanup": {"type": "object"},
        "compression": {
            "type": "object",
            "required": [
                "enabled",
                "threshold_kb",
                "compression_level",
                "compressed_entries",
                "compressed_size_mb",
                "original_size_mb",
                "space_saved_mb",
                "compression_ratio",
            ],
        },
        "prefetch": {"type": "object"},
        "coalescing": {
            "type": "object",
            "properties": {
                "stream_bytes_held": {"type": "integer"},
                "stream_bytes_written": {"type": "integer"},
            },
        },
    },
}


_NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}
_USE: dict[str, Any] = {
    "type": "object",
    "required": [
        "requests_this_minute",
        "requests_per_minute",
        "upstream_characters_today",
        "upstream_characters_per_day",
    ],
    "properties": {
        "key": {"type": "string"},
        "tenant": {"type": "string"},
        "requests_this_minute": _NULLABLE_INT,
        "requests_per_minute": _NULLABLE_INT,
        "upstream_characters_today": _NULLABLE_INT,
        "upstream_characters_per_day": _NULLABLE_INT,
    },
}
_USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["client_auth", "keys", "tenants"],
    "properties": {
        "client_auth": {"type": "string", "enum": ["keys", "upstream", "none"]},
        "keys": {"type": "array", "items": _USE},
        "tenants": {"type": "array", "items": _USE},
    },
}


def _paths(routes: Sequence[str]) -> dict[str, Any]:
    route: dict[str, Any] = {"type": "string"}
    if routes:
        route["enum"] = list(routes)
    return {
        "/admin/audio-cache/stats": {
            "get": {
                "summary": "Statistics from the counters: size, hit ratios, content types, "
                "tenants, cleanup, compression",
                "operationId": "stats",
                "responses": {"200": _json(_STATS, "The statistics"), **_REFUSED},
            }
        },
        "/admin/audio-cache/usage": {
            "get": {
                "summary": "Each client key's and tenant's requests this minute and upstream "
                "characters today, against their limits (null where no limit is set)",
                "operationId": "usage",
                "responses": {"200": _json(_USAGE, "Usage in the current windows"), **_REFUSED},
            }
        },
        "/admin/audio-cache": {
            "delete": {
                "summary": "Clear this cache's entries (its key prefix only; never FLUSHDB)",
                "operationId": "clear",
                "parameters": [_query("tenant", "Only this tenant's entries", _TENANT)],
                "responses": {"200": _json(_COUNT, "How many entries were deleted"), **_REFUSED},
            }
        },
        "/admin/audio-cache/entry": {
            "get": {
                "summary": "One entry's metadata; its TTL, hits and recency stay untouched",
                "operationId": "getEntry",
                "parameters": _lookup(route),
                "responses": {
                    "200": _json(_ENTRY, "The entry's metadata"),
                    "404": _ERROR,
                    **_REFUSED,
                },
            },
            "delete": {
                "summary": "Delete one entry",
                "operationId": "deleteEntry",
                "parameters": _lookup(route),
                "responses": {"200": _json(_COUNT, "Deleted"), "404": _ERROR, **_REFUSED},
            },
        },
        "/admin/audio-cache/entries": {
            "delete": {
                "summary": "Delete every entry matching all the given selectors",
                "operationId": "purgeBySelector",
                "parameters": [
                    _query("voice", "Voice"),
                    _query("model", "Model"),
                    _query("tenant", "Tenant", _TENANT),
                    _query("content_type", "Content type (welcome_message, ...)"),
                    _query("route", "Route rule name"),
                ],
                "responses": {"200": _json(_COUNT, "How many entries were deleted"), **_REFUSED},
            }
        },
        "/admin/audio-cache/cleanup": {
            "post": {
                "summary": "Run the size-based cleanup now",
                "operationId": "cleanup",
                "parameters": [
                    _query("force", "Clean even below the threshold", {"type": "boolean"}),
                    _query(
                        "target_percent",
                        "Target size, percent of audio_cache_max_size_mb",
                        {"type": "number", "minimum": 0, "exclusiveMaximum": 100},
                    ),
                    _query("tenant", "Enforce this tenant's quota now", _TENANT),
                ],
                "responses": {
                    "200": _json({"type": "object"}, "What the cleanup did"),
                    "409": _ERROR,
                    **_REFUSED,
                },
            }
        },
        "/admin/audio-cache/prefetch": {
            "post": {
                "summary": "Synthesize the missing ones of a list of requests, in the background",
                "operationId": "startPrefetch",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["requests"],
                                "additionalProperties": False,
                                "properties": {
                                    "requests": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": _description(route),
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["job", "total", "status_url"],
                            "properties": {
                                "job": {"type": "string"},
                                "total": {"type": "integer"},
                                "status_url": {"type": "string"},
                            },
                        },
                        "The job was started",
                    ),
                    "413": _ERROR,
                    **_REFUSED,
                },
            }
        },
        "/admin/audio-cache/prefetch/{job}": {
            "get": {
                "summary": "Progress of a prefetch job (kept for a day, on every replica)",
                "operationId": "prefetchStatus",
                "parameters": [
                    {
                        "name": "job",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    }
                ],
                "responses": {"200": _json(_JOB, "The job"), "404": _ERROR, **_REFUSED},
            }
        },
        "/admin/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document"), **_REFUSED},
            }
        },
    }


def _error_response(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def document(routes: Sequence[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every /admin route; ``routes``: the route rule names
    this proxy knows (listed as the allowed values where a route is named)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tts-cache-proxy admin API",
            "version": "1",
            "description": "Manage the text-to-speech audio cache: statistics, purges, "
            "lookups, cleanup and prefetch.",
        },
        "security": [{"bearer": []}],
        "paths": _paths(routes),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_TOKEN. Without one configured, only loopback "
                    "clients are answered.",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "status"],
                            "properties": {
                                "message": {"type": "string"},
                                "status": {"type": "integer"},
                                "field": {"type": "string"},
                            },
                        }
                    },
                }
            },
            "responses": {
                "Error": _error_response("Bad input (400), or nothing there (404), as JSON"),
                "Unauthorized": _error_response("No admin token sent"),
                "Forbidden": _error_response("Wrong token, or not loopback without a token"),
                "Unavailable": _error_response("The cache store is unavailable"),
            },
        },
    }


async def serve(request: web.Request) -> web.Response:
    rules = home(request.app)[PROCESSOR].rules
    return web.json_response(document([rule.name for rule in rules]))
