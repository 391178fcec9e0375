"""The "ssd" logger: console (through tqdm, so log lines never tear the progress bar) and OUTPUT_DIR/log.txt.

Every module logs with `logging.getLogger(__name__)` (names under "ssd."); `setup_logger` attaches the
handlers once, in train.py / test.py. Processes other than rank 0 only show warnings and errors.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm

FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
DATE_FORMAT = "%m/%d %H:%M:%S"


class TqdmHandler(logging.StreamHandler):
    """Writes records with `tqdm.write`, which clears an active progress bar, prints, and redraws the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging must never crash training; same policy as logging.StreamHandler
            self.handleError(record)


def setup_logger(output_dir: str | Path | None = None, rank: int = 0, name: str = "ssd") -> logging.Logger:
    """Configure logger `name` (default: the whole package) and return it.

    Args:
        output_dir: if given (and rank 0), also append to output_dir/log.txt.
        rank: process rank; ranks other than 0 log warnings and errors only, to the console.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):  # calling twice (tests, notebooks) must not duplicate lines
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT if rank == 0 else f"[rank {rank}] " + FORMAT, datefmt=DATE_FORMAT)
    console = TqdmHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger
