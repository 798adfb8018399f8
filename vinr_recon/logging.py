"""structlog, configured once per process: JSON when not a TTY, console otherwise.

Standard-library loggers (uvicorn, arq, alembic) go through the same processors, and a
last line of defence drops values of keys that name secrets. In JSON an exception is a field of
its own, `exception`: a list of stacks (type, value, frames: file, line, function), the
exception's first, then its cause's, that a log search can query; never the frames' local variables (a secret may be
one). The console shows the usual traceback.
"""

from __future__ import annotations

import functools
import logging
import sys

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_SECRET_KEY_PARTS = ("secret", "signature", "password", "api_key", "apikey", "authorization", "token")


@functools.lru_cache(maxsize=4096)  # a handful of key names, on every log line
def _names_a_secret(key: str) -> bool:
    return key != "event" and any(part in key.lower() for part in _SECRET_KEY_PARTS)


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if isinstance(key, str) and _names_a_secret(key):
            event_dict[key] = "[redacted]"
    return event_dict


STRUCTURED_EXCEPTIONS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    exceptions = STRUCTURED_EXCEPTIONS if json else structlog.processors.format_exc_info
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                renderer,
            ],
        )
    )
    # No caller, thread or process is rendered, so none is computed for each record (the
    # "Optimization" section of the logging HOWTO): the worker logs a line per event.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request at INFO: one line per invoice page of a reconciliation, and the
    # full URL of each. The client logs its retries and failures itself.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
