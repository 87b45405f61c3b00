"""Structured logs: one JSON object per line on stderr, one line per event.

An event is something an operator wants to see happen: the server starting and stopping, a model
reload, a circuit-breaker transition, precompute progress. Each line carries ``ts`` (UTC, ISO 8601),
``level``, ``logger``, ``event`` and the event's own fields; a plain log record from a library
(uvicorn, a warning from :mod:`serving.model`) becomes ``event: "log"`` with its ``message``::

    {"ts":"2026-12-02T03:01:02.345Z","level":"info","logger":"hybridserve","event":"reload","model_version":"a16b398c84f1"}

The level is ``Settings.log_level`` (``HYBRIDSERVE_LOG_LEVEL``). Lines go to whatever ``sys.stderr``
is when they are written, so a test's capture or a worker's redirect sees them.

Example::

    configure(settings.log_level)                       # once per process
    log_event("reload", model_version="a16b398c84f1", seconds=0.41)
    log_breaker_transition("closed", "open", failures=3)
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

EVENT_LOGGER = "hybridserve"
# Loggers whose records become JSON lines: our events, our modules' own loggers, the HTTP server.
CONFIGURED_LOGGERS = (EVENT_LOGGER, "serving", "models", "uvicorn")
_RESERVED = ("ts", "level", "logger", "event")

_events = logging.getLogger(EVENT_LOGGER)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update({k: v for k, v in fields.items() if k not in _RESERVED})
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stderr``, not the one there was when logging was configured."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str) -> None:
    """Send the configured loggers' records at ``level`` and above to stderr as JSON lines.

    Idempotent: a second call (another app in the same process) replaces the handler, never adds one.
    """
    for name in CONFIGURED_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(handler)
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        # Not also through the root logger: whatever prints there would print every line twice.
        logger.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One event line; ``fields`` must be JSON-ready (anything else is written as its ``str``)."""
    if _events.isEnabledFor(level):
        _events.log(level, event, extra={"event": event, "fields": fields})


def log_breaker_transition(old: str, new: str, failures: int) -> None:
    """A circuit breaker changed state (``closed`` / ``open`` / ``half_open``); opening is a warning."""
    log_event("breaker_transition", logging.WARNING if new == "open" else logging.INFO, old=old, new=new, failures=failures)
