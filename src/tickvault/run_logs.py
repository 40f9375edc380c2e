"""tickvault's own log lines in the logs of the Prefect flow run that caused them.

Prefect sends to its API only the loggers it configures (``prefect.flow_runs``, ...); the
``tickvault`` loggers write to the root logger, which a flow-run process sets to WARNING, so a
run's Logs tab showed Prefect's lines and none of ours. :func:`tickvault_logs_in_flow_run` attaches
Prefect's API log handler to the ``tickvault`` logger for the duration of a flow run, at INFO,
whether the run is a subprocess of a process worker or called in-process: it is part of the flow's
own code, so it needs no Prefect setting on the worker (``PREFECT_LOGGING_EXTRA_LOGGERS`` would,
and would not redact). Lines from tasks and from ``asyncio.to_thread`` workers are attributed to
their task run and flow run through the context Prefect keeps in context variables.

What this must never do: send a secret. Every record passing through is redacted in place
(message, arguments and exception text) with :func:`tickvault.config.secret_values` before any
handler formats it, so the worker's terminal (Prefect's console handler on the root logger) gets
the redacted text too. Records logged outside a run context (a thread not started by
``asyncio.to_thread``) are dropped from the API quietly; they still reach the console.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tickvault.config import Settings, redact, secret_values

LOGGER_NAME = "tickvault"
# INFO and up: a run's summary lines ("reconcile run 12: 3 differences, ...") are INFO; DEBUG
# would flood the run's logs (and the API) with per-call detail.
LEVEL = logging.INFO


class RedactSecrets(logging.Filter):
    """Replaces every secret in a record's message and exception text by ``****`` (in place)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets or getattr(record, "_tickvault_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's own error path
            return True
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        record._tickvault_redacted = True
        return True


def _api_handler() -> logging.Handler:
    from prefect.exceptions import MissingContextError
    from prefect.logging.handlers import APILogHandler

    class _RunLogHandler(APILogHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            import sys

            if isinstance(sys.exc_info()[1], MissingContextError):
                return  # not inside a run (see the module docstring): nothing to attribute it to
            super().handleError(record)

    return _RunLogHandler()


@contextmanager
def tickvault_logs_in_flow_run(settings: Settings, *urls: str) -> Iterator[None]:
    """While inside, ``tickvault.*`` records at INFO and up go to the current flow run's logs,
    redacted of the settings' secrets and of the passwords in ``urls`` (e.g. the database URL)."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = _api_handler()
    handler.setLevel(LEVEL)
    handler.addFilter(RedactSecrets(secret_values(settings, *urls)))
    previous_level = logger.level
    if logger.getEffectiveLevel() > LEVEL:
        logger.setLevel(LEVEL)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()
