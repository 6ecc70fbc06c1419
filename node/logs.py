"""Structured logs: one JSON object per line (time, level, logger, event and the fields the node
passes in ``extra=``: sop_uid, calling_ae, reason, ...)."""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

# Attributes every LogRecord has; anything else came from ``extra=`` and goes into the line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(stream: TextIO = sys.stderr, level: int = logging.INFO) -> logging.Handler:
    """Send the node's logs (``ddad_edge.node.*``) as JSON lines to ``stream``; pynetdicom's own
    logs go there too at WARNING and above. Returns the handler (to remove it again)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for name, lvl in (("ddad_edge.node", level), ("pynetdicom", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(lvl)
        logger.propagate = False
    return handler
