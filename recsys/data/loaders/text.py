"""Delimited text read with ``pyarrow.csv`` one block of whole lines at a time: files (gzip by
its magic bytes), blocks, line ends and invalid UTF-8, wrong field counts, the tally of skips.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ...errors import DataError
from .report import LoadReport, check_rows

GZIP_MAGIC = b"\x1f\x8b"
WRONG_FIELDS = "wrong field count"
#: Default bytes per block. Blocks above glibc's 32 MiB mmap threshold are returned to the OS
#: after each block and page-faulted in again, which costs more than it saves here.
DEFAULT_BLOCK_SIZE = 16 << 20
#: A longer line is refused (the file is not line-oriented text, or is damaged).
MAX_LINE_BYTES = 64 << 20
_READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)
_NAME = re.compile(r"[^\W\d][\w .()-]{0,63}")


def check_file(path: str | Path) -> Path:
    """``path`` as a Path if it is a readable regular file, else a :class:`DataError`."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {str(path)!r}. Check the path (relative to {Path.cwd()}).")
    if p.is_dir():
        raise DataError(
            f"{str(path)!r} is a directory, expected a ratings file "
            f"(e.g. an Amazon reviews .tsv/.tsv.gz, a MovieLens ratings file, a CSV or Parquet)."
        )
    if not p.is_file():
        raise DataError(f"{str(path)!r} is not a regular file (a device, pipe or socket).")
    return p


def starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


def open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing gzip (detected by its magic bytes)."""
    try:
        if starts_with(path, GZIP_MAGIC):
            # Arrow's C++ gzip stream is ~20% faster than the gzip module and releases the GIL.
            return pa.input_stream(str(path), compression="gzip")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc.strerror or type(exc).__name__}.") from exc


def read(fh: BinaryIO, n: int | None, path: Path) -> bytes:
    """``fh.read(n)`` (None: all); a damaged gzip stream or an I/O failure is a DataError."""
    try:
        return fh.read(n)
    except _READ_ERRORS as exc:
        raise DataError(
            f"cannot read {path}: it is damaged (a truncated or corrupt gzip stream, or an I/O "
            f"error). Check the file, e.g. with `gzip -t`."
        ) from exc


def head(path: Path, n: int | None = 1 << 16) -> bytes:
    """The first ``n`` (decompressed) bytes of ``path``; None: all of them."""
    with open_binary(path) as fh:
        return read(fh, n, path)


def first_line(buf: bytes) -> bytes:
    """The first line of ``buf`` without its CR and a UTF-8 BOM."""
    return buf.split(b"\n", 1)[0].rstrip(b"\r").removeprefix(b"\xef\xbb\xbf")


def iter_blocks(path: Path, block_size: int) -> Iterator[bytes]:
    """Yield the lines of ``path`` in runs of about ``block_size`` bytes, each ending with ``\\n``.

    A final line without newline gets one. The next block is read in a background thread
    while the caller processes the current one (file reads and decompression release the GIL).
    """
    block_size = max(int(block_size), 1)
    with open_binary(path) as fh, ThreadPoolExecutor(1, thread_name_prefix="recsys-read") as pool:
        pending = pool.submit(read, fh, block_size, path)
        carry = b""  # an unfinished line
        while chunk := pending.result():
            pending = pool.submit(read, fh, block_size, path)
            cut = chunk.rfind(b"\n") + 1
            if cut:
                yield carry + chunk[:cut]
                carry = chunk[cut:]
                continue
            carry += chunk
            if len(carry) > MAX_LINE_BYTES:
                raise DataError(
                    f"{path} has a line longer than {MAX_LINE_BYTES >> 20} MiB: it is not "
                    f"line-oriented text (binary, or the wrong --format)."
                )
        if carry:
            yield carry + b"\n"


@contextlib.contextmanager
def lines_of(
    path: Path, block_size: int, header: bool
) -> Iterator[tuple[str | None, Iterator[bytes]]]:
    """Yield the header line of ``path`` (None: no header wanted, or an empty file) and the
    blocks of the other lines (see :func:`iter_blocks`)."""
    with contextlib.closing(iter_blocks(path, block_size)) as blocks:
        first = next(blocks, b"") if header else b""
        line, rest = split_header(first) if first else (None, b"")
        yield line, itertools.chain([rest] if rest else [], blocks)


def split_header(first: bytes) -> tuple[str, bytes]:
    """The header line of a block (BOM and CR stripped, decoded) and the rest of the block."""
    return first_line(first).decode("utf-8", errors="replace"), first[first.find(b"\n") + 1 :]


def describe_columns(names: list[str]) -> str:
    """The header's column names for an error message -- only when they look like names: a first
    line that is data (or not text) is not echoed (error messages never show a file's content).
    """
    if len(names) <= 100 and all(_NAME.fullmatch(n) for n in names):
        return f"columns {names}"
    n = len(names)
    return f"{n} field{'s' if n != 1 else ''} that do not look like column names (not shown)"


def is_utf8(buf: bytes) -> bool:
    """True when ``buf`` is valid UTF-8 (Arrow's SIMD validator, no decoding)."""
    offsets = pa.py_buffer(np.array([0, len(buf)], dtype=np.int64))
    arr = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(buf)])
    try:
        arr.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def normalise(buf: bytes) -> tuple[bytes, np.ndarray]:
    """Strip CR of CRLF, blank out lone CRs, repair invalid UTF-8: the new buffer (same lines, same
    order) and the 0-based indices of the lines that were not valid UTF-8.
    """
    if buf.find(b"\r") >= 0:
        # A lone CR would end a row for Arrow's CSV parser; in these formats it is not a line
        # break, so it becomes a space.
        buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b" ")
    if is_utf8(buf):
        return buf, np.empty(0, dtype=np.int64)
    lines = buf.split(b"\n")
    bad = []
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            lines[i] = line.decode("utf-8", errors="replace").encode("utf-8")
    return b"\n".join(lines), np.asarray(bad, dtype=np.int64)


@dataclass
class Block:
    """A block of lines parsed by Arrow."""

    table: pa.Table  # one row per line with the right number of fields (the kept columns)
    lines: np.ndarray | None  # 0-based line (in the block) of each row; None: unknown (quotes)
    wrong_fields: np.ndarray  # 0-based lines with a wrong number of fields (blank lines too)
    bad_utf8: np.ndarray  # 0-based lines that were not valid UTF-8 (repaired)
    n_lines: int
    nulls: dict[str, pa.Array]  # per column (all of them), which rows are empty


def parse(
    buf: bytes,
    names: list[str],
    sep: str,
    quote: bool = False,
    types: dict[str, pa.DataType] | None = None,
    keep: tuple[str, ...] | None = None,
) -> Block:
    """Parse a block of whole lines (``buf`` ends with ``\\n``) into the fields ``names`` (all of
    them; the Arrow ``types`` of some, the others are strings), keeping the columns ``keep`` (None:
    all; the others only count empty fields). ``pyarrow.ArrowInvalid`` when a value is not of its
    type."""
    buf, bad_utf8 = normalise(buf)
    n_lines = buf.count(b"\n")
    invalid: list[int] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row.number - 1)
        return "skip"

    table = pcsv.read_csv(
        pa.py_buffer(buf),
        # one Arrow block per buffer: one dictionary per column (Lookup walks dictionaries)
        read_options=pcsv.ReadOptions(
            column_names=names, use_threads=False, block_size=min(len(buf) + 1, 1 << 30)
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=sep, quote_char='"' if quote else False, ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()) | (types or {}), null_values=[""],
            strings_can_be_null=True, check_utf8=False,  # invalid UTF-8 was repaired by normalise
        ),
    )  # fmt: skip
    wrong = np.asarray(invalid, dtype=np.int64)
    lines: np.ndarray | None = None
    if table.num_rows + len(wrong) == n_lines:  # else a quoted field spans lines
        lines = np.setdiff1d(np.arange(n_lines), wrong, assume_unique=True)
        if buf.startswith(b"\n") or buf.find(b"\n\n") >= 0:
            # Arrow reads a blank line as a row of nulls; it is a wrong field count.
            nl = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
            blank = np.flatnonzero(np.diff(nl, prepend=-1) == 1)
            is_blank = np.isin(lines, blank)
            table = table.filter(pa.array(~is_blank))
            lines, wrong = lines[~is_blank], np.union1d(wrong, blank)
    nulls = {name: table.column(name).is_null().combine_chunks() for name in names}
    if keep is not None:
        table = table.select(list(keep))
    return Block(table, lines, wrong, bad_utf8, n_lines, nulls)


def parse_blocks(blocks: Iterator[bytes], parse: Callable[[bytes], Block]) -> Iterator[Block]:
    """``parse`` every block in two worker threads (Arrow releases the GIL), in order, up to two
    blocks ahead of the caller."""
    workers = 2
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recsys-parse") as pool:
        pending: deque[Future[Block]] = deque()
        for buf in blocks:
            pending.append(pool.submit(parse, buf))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Tally:
    """Lines read, skipped per reason (with the first line numbers), nulls per column and
    invalid UTF-8, accumulated over blocks. The loader's reason ``k`` (code ``k`` of a row) is
    ``reasons[k - 1]``; a wrong field count comes first."""

    def __init__(self, columns: list[str], reasons: list[str], max_examples: int) -> None:
        self.columns = columns
        self.reasons = [WRONG_FIELDS, *reasons]
        self.counts = np.zeros(len(self.reasons) + 1, dtype=np.int64)  # [valid, *self.reasons]
        self.max_examples = max(int(max_examples), 0)
        self.examples: list[tuple[int, str]] = []  # (0-based data line, reason)
        self.nulls = np.zeros(len(columns), dtype=np.int64)
        self.lines = 0
        self.invalid_utf8 = 0
        self.location = "line"

    def add(self, block: Block, codes: np.ndarray) -> np.ndarray:
        """Count a block whose rows got ``codes`` (0: valid); return the mask of valid rows."""
        valid = codes == 0
        row_codes = np.where(valid, 0, codes + 1).astype(np.int8)  # 1: wrong field count
        if block.lines is None:  # a quoted field spans lines: rows are numbered, not lines
            self.location = "row"
            line_codes = row_codes
            self.counts[1] += len(block.wrong_fields)  # counted, but not listed
        else:
            line_codes = np.ones(block.n_lines, dtype=np.int8)
            line_codes[block.lines] = row_codes
            self.invalid_utf8 += int(np.isin(block.lines[valid], block.bad_utf8).sum())
        self.counts += np.bincount(line_codes, minlength=len(self.counts))
        room = max(self.max_examples - len(self.examples), 0)
        for i in np.flatnonzero(line_codes)[:room]:
            self.examples.append((self.lines + int(i), self.reasons[line_codes[i] - 1]))
        for j, name in enumerate(self.columns):
            nulls = np.asarray(pc.fill_null(block.nulls[name], True), dtype=bool)
            self.nulls[j] += int(np.count_nonzero(nulls & valid))
        self.lines += len(line_codes) + (len(block.wrong_fields) if block.lines is None else 0)
        return valid

    def fill(self, report: LoadReport, first_line: int, path: Path) -> None:
        """Copy the counts into ``report`` (``first_line``: the number of the first data line);
        a :class:`DataError` when no valid row remains."""
        first = 1 if self.location == "row" else first_line
        report.lines_read = self.lines
        report.rows_read = int(self.counts[0])
        report.rows_skipped = self.lines - report.rows_read
        counts = zip(self.reasons, self.counts[1:], strict=True)
        report.skip_reasons = {reason: int(n) for reason, n in counts if n}
        report.skipped_lines = [(i + first, r) for i, r in self.examples]
        report.null_counts = {c: int(k) for c, k in zip(self.columns, self.nulls, strict=True)}
        report.invalid_utf8_lines = self.invalid_utf8
        report.location = self.location
        check_rows(report, path)
