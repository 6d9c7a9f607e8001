"""Logging per ``[logging]``: level, format, optional size-rotated file. Shared by both drivers."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from .config import LoggingConfig


def setup_logging(cfg: LoggingConfig, *, debug: bool = False) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(cfg.format)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.file:
        if cfg.max_size:
            handlers.append(
                logging.handlers.RotatingFileHandler(
                    cfg.file, maxBytes=cfg.max_size, backupCount=cfg.backup_count, encoding="utf-8"
                )
            )
        else:
            handlers.append(logging.FileHandler(cfg.file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel("DEBUG" if debug else cfg.level)
