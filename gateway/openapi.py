"""One OpenAPI document for the whole API, merged from the services' own documents.

Each service's ``/openapi.json`` gives the paths the gateway routes to it (a path another
service owns by the route table is left out, so each operation appears once) and its
components; a component name two services define differently is renamed
``<service>__<Name>`` in that service's part. The gateway adds its own routes, the error
envelope (every 4xx/5xx answer), and the security schemes: a JWT bearer (or the dev
bootstrap key), and platform API keys (bearer or HMAC-signed headers).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson

from gateway.permissions import match
from gateway.routes import resolve
from gateway.upstream import UpstreamClient, UpstreamError

ERROR_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "example": "relation.cycle"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT (HS256/RS256; sub = user id, roles, scopes such as pii:read), "
        "a platform API key `tk_...`, or the dev stack's bootstrap admin key.",
    },
    "apiKeySignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Tuike-Key-Id",
        "description": "A platform API key's signed request: X-Tuike-Key-Id, "
        "X-Tuike-Timestamp, X-Tuike-Nonce and X-Tuike-Signature = hex HMAC-SHA256 keyed "
        "with sha256_hex(secret) over METHOD\\npath[?query]\\ntimestamp\\nnonce\\n"
        "sha256_hex(body). See docs/security.md.",
    },
}

_ERROR_STATUSES = {
    "400": "Bad request (a malformed path or query parameter)",
    "401": "Missing or invalid credentials",
    "403": "The caller may not do this",
    "404": "Not found",
    "409": "Conflict with the current state",
    "413": "Request body too large",
    "422": "Malformed request body",
    "429": "Rate limited (see Retry-After)",
    "503": "A service is unavailable",
}
_METHODS = ("get", "put", "post", "delete", "patch")


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


def _rename_components(doc: dict[str, Any], service: str, names: set[str]) -> dict[str, Any]:
    """The document with component schemas ``names`` renamed ``<service>__<name>``."""
    text = orjson.dumps(doc).decode()
    for name in names:
        text = text.replace(
            f'"#/components/schemas/{name}"', f'"#/components/schemas/{service}__{name}"'
        )
    renamed: dict[str, Any] = orjson.loads(text)
    schemas = renamed.get("components", {}).get("schemas", {})
    for name in names:
        if name in schemas:
            schemas[f"{service}__{name}"] = schemas.pop(name)
    return renamed


def merge(gateway_doc: dict[str, Any], service_docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tuike API",
            "version": "1",
            "description": "The promoter / multi-level distribution API, through the gateway. "
            "Every error is the envelope `{error: {code, message, details}}`.",
        },
        "paths": {},
        "components": {"schemas": {}, "securitySchemes": copy.deepcopy(SECURITY_SCHEMES)},
        "security": [{"bearerAuth": []}, {"apiKeySignature": []}],
    }
    schemas: dict[str, Any] = merged["components"]["schemas"]
    sources = [("gateway", gateway_doc), *sorted(service_docs.items())]
    for service, doc in sources:
        own_paths = {
            path: item
            for path, item in doc.get("paths", {}).items()
            if path.startswith(("/api/", "/s/"))
            and (service == "gateway" or resolve(path) == service)
        }
        theirs = doc.get("components", {}).get("schemas", {})
        clashes = {n for n, s in theirs.items() if n in schemas and schemas[n] != s}
        part = {"paths": own_paths, "components": {"schemas": theirs}}
        if clashes:
            part = _rename_components(part, service, clashes)
        schemas.update(part["components"]["schemas"])
        for path, item in part["paths"].items():
            merged["paths"].setdefault(path, {}).update(item)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["ErrorEnvelope"] = ERROR_ENVELOPE
    for path, item in merged["paths"].items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in _ERROR_STATUSES.items():
                responses[status] = _error_response(description)
            rule, _ = match(method.upper(), path)
            if rule.public:
                operation["security"] = []
                responses.pop("401", None)
                responses.pop("403", None)
            else:
                operation["x-tuike-roles"] = sorted(rule.roles | {"admin"})
    return merged


async def fetch_service_docs(
    client: UpstreamClient, upstreams: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each reachable service's document (a service that is down is left out for now)."""

    async def one(name: str, base: str) -> tuple[str, dict[str, Any] | None]:
        try:
            status, document = await client.get_json(f"{base}/openapi.json", timeout_seconds=3.0)
            if status == 200 and isinstance(document, dict):
                return name, document
        except (UpstreamError, ValueError):
            pass
        return name, None

    found = await asyncio.gather(*(one(n, b) for n, b in upstreams.items()))
    return {name: doc for name, doc in found if doc is not None}
