"""Structured logs: a request ID on every request, and JSON lines when ``LOG_FORMAT=json``.

- ``RequestContextMiddleware`` (first in ``MIDDLEWARE``) gives every request an ID of the server's own making
  (unique: services use it as an idempotency key, e.g. the entropy ledger row), answers it in the ``X-Request-ID``
  header and, for the API's JSON errors (``{"error": {...}}``), in the body as ``error.request_id``, so a tenant's
  bug report names the log lines of its request. A caller's ``X-Request-ID`` (nginx's ``$request_id``, a load
  balancer's) is never adopted: when it is a safe token it is logged beside it as ``edge_request_id``.
- The request ID, the tenant (set by ``tenants.tenancy.resolve_tenant`` through ``bind``) and the service order
  (``bind(order_id=...)``, and Celery tasks whose arguments carry one) live in context variables; the
  ``ContextFilter`` copies them onto every log record of the request or task, whatever logger wrote it.
- ``JsonFormatter``: one JSON object per line (``ts``, ``level``, ``logger``, ``message``, ``request_id``,
  ``tenant``, ``order_id``, ``exc``...). It writes the message as formatted by the code that logged it: key
  material never reaches a log call (tests/tenants/test_secrets.py checks the plain and the JSON format alike).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_FIELDS = ("request_id", "edge_request_id", "tenant", "order_id", "task")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"qxaas_log_{name}", default=None) for name in _FIELDS
}
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")  # what we echo back and log: no spaces, quotes or CRLF


def new_request_id() -> str:
    return uuid.uuid4().hex


def edge_request_id(header: str | None) -> str | None:
    """The caller's request ID when it is a safe token (logged, never echoed or used as our own)."""
    return header if header and _SAFE_REQUEST_ID.match(header) else None


def bind(**fields: Any) -> None:
    """Attach ``request_id``, ``tenant``, ``order_id`` or ``task`` to the logs of the current request or task."""
    for name, value in fields.items():
        _context[name].set(None if value is None else str(value))


def current(name: str) -> str | None:
    return _context[name].get()


@contextmanager
def scope(**fields: Any) -> Iterator[None]:
    """``bind`` for the duration of a block, then restore what was there (a task, a request)."""
    tokens = {name: _context[name].set(None if value is None else str(value)) for name, value in fields.items()}
    try:
        yield
    finally:
        for name, token in tokens.items():
            _context[name].reset(token)


class ContextFilter(logging.Filter):
    """Copies the request/task context onto every record (attached to the handlers, so every logger has it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in _FIELDS:
            if not hasattr(record, name):
                setattr(record, name, _context[name].get())
        return True


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", *_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields of a log call are kept (JSON-safe, as strings if not)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                entry[name] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """The plain format, with the request ID when there is one (grep a request's lines in either format)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [request_id={rid}]" if rid else text


def logging_config(log_format: str, level: str, quiet: dict[str, str]) -> dict[str, Any]:
    """The ``LOGGING`` dict of the settings: ``log_format`` is ``plain`` (default) or ``json``."""
    formatter = "json" if log_format.lower() == "json" else "plain"
    if formatter == "json":
        logging.captureWarnings(True)  # Python warnings as log records, not raw lines on stderr
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "portal.logs.ContextFilter"}},
        "formatters": {
            "plain": {"()": "portal.logs.PlainFormatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "portal.logs.JsonFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": formatter, "filters": ["context"]}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {name: {"level": lvl} for name, lvl in quiet.items()},
    }


class RequestContextMiddleware:
    """Request ID in, request ID out (header, JSON error bodies); context for the request's log lines.

    The context stays bound until Django's ``request_finished`` (so Django's own "Not Found: ..." line, written
    after the middleware chain returns, still names the request), then it is cleared."""

    def __init__(self, get_response) -> None:
        from django.core.signals import request_finished

        self.get_response = get_response
        request_finished.connect(_clear_request_context, dispatch_uid="portal.logs.clear")

    def __call__(self, request):
        rid = new_request_id()
        request.request_id = rid
        bind(request_id=rid, edge_request_id=edge_request_id(request.headers.get(REQUEST_ID_HEADER)), tenant=None,
             order_id=None)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = rid
        if response.status_code >= 400:
            _add_to_error_body(response, rid)
        return response


def _clear_request_context(**_kwargs: Any) -> None:
    bind(request_id=None, edge_request_id=None, tenant=None, order_id=None)


def _add_to_error_body(response, rid: str) -> None:
    if getattr(response, "streaming", False) or not response.get("Content-Type", "").startswith("application/json"):
        return
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"]["request_id"] = rid
        response.content = json.dumps(body).encode()
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))
