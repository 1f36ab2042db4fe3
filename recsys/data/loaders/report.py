"""The load report: what a loader read, kept, skipped and repaired."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import DataError

logger = logging.getLogger("recsys")


@dataclass
class LoadReport:
    """What a loader read, kept, skipped and repaired.

    ``lines_read == rows_read + rows_skipped``. Line numbers are 1-based, the header being line
    1; with ``location == "row"`` (Parquet, or a CSV whose quoted fields span lines) they are
    1-based row numbers. A trailing final newline does not create a line; an empty line before
    it does (and is malformed).
    """

    source: str  # the path as given
    format: str  # "amazon", "movielens", "csv" or "parquet"
    columns: list[str] = field(default_factory=list)  # all the source's columns, loaded or not
    lines_read: int = 0  # data lines (Parquet: rows) seen, excluding the header
    rows_read: int = 0  # valid rows returned
    rows_skipped: int = 0  # malformed lines skipped
    # skipped lines per reason, e.g. {"wrong field count": 3} (invalid ratings have their own)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    # the first ``max_examples`` skipped lines as (number, reason)
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)
    # per source column (all of them), the number of empty/null values among valid rows
    null_counts: dict[str, int] = field(default_factory=dict)
    invalid_utf8_lines: int = 0  # valid lines that were not UTF-8, decoded with U+FFFD
    seconds: float = 0.0  # wall-clock time of the load
    bad_dates: int = 0  # valid rows whose date was present but unparseable (kept, with NaT)
    location: str = "line"  # "line" (text formats) or "row" (Parquet): what skipped_lines count

    def _skip_text(self) -> str:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in self.skip_reasons.items())
        where = ", ".join(str(n) for n, _ in self.skipped_lines)
        more = ", ..." if self.rows_skipped > len(self.skipped_lines) else ""
        plural = "s" if self.rows_skipped != 1 else ""
        return (
            f"{self.rows_skipped:,} malformed {self.location}{plural} ({reasons}; "
            f"first at {self.location}s {where}{more})"
        )

    def summary(self) -> str:
        """One or two human-readable lines describing the load."""
        ok = f"skipped {self._skip_text()}" if self.rows_skipped else f"all {self.location}s valid"
        utf8 = f"{self.invalid_utf8_lines:,} lines with invalid UTF-8 (decoded with U+FFFD)"
        dates = f"{self.bad_dates:,} unparseable dates (set to NaT)"
        extra = [t for n, t in ((self.invalid_utf8_lines, utf8), (self.bad_dates, dates)) if n]
        extra_line = "\n" + "; ".join(extra) if extra else ""
        return (
            f"read {self.rows_read:,} rows from {self.source} ({self.format}, "
            f"{self.seconds:.1f} s); {ok}{extra_line}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self) | {"skipped_lines": [list(x) for x in self.skipped_lines]}


def check_rows(report: LoadReport, path: Path) -> None:
    """Raise :class:`DataError` when no valid row remains, saying why."""
    if report.rows_read:
        return
    if report.lines_read == 0:
        raise DataError(
            f"nothing valid remains in {path}: the file has no data lines "
            f"(empty or header only). Expected at least one rating."
        )
    raise DataError(
        f"nothing valid remains in {path}: 0 of {report.lines_read:,} "
        f"{report.location}s valid; {report._skip_text()}. "
        f"Check the format (--format) and the column mapping."
    )


def finish(report: LoadReport, t0: float) -> None:
    """Time the load and log its summary once: WARNING when anything was dropped or repaired."""
    report.seconds = time.perf_counter() - t0
    damaged = report.rows_skipped or report.bad_dates or report.invalid_utf8_lines
    logger.log(logging.WARNING if damaged else logging.INFO, "%s", report.summary())
