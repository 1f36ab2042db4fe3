"""Property-based fuzzing of the loaders: whatever the bytes, a ratings frame or a RecsysError.

Files are built from fragments a ratings file can hold (headers of every format, ids, ratings,
dates, separators, quotes, CR, non-UTF-8 bytes, gzip, truncation) or are arbitrary bytes; Parquet
files mix every Arrow type a column can have. Any exception other than a ``RecsysError`` fails,
and so does a frame that breaks the documented contract. Deterministic (``derandomize``) and
bounded, so it runs in CI.
"""

from __future__ import annotations

import datetime as dt
import gzip
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from recsys.data.loaders import detect_format, load_ratings, load_table
from recsys.data.schema import AMAZON_COLUMNS, RATINGS_COLUMNS
from recsys.errors import RecsysError

FUZZ = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAPPING = dict(user="u", item="i", rating="r", timestamp="ts", title="t")
ID = st.sampled_from(["1", "2", "10", "42", "007", "B001", "B002", "x y", "-5", ""])
STAR = st.sampled_from(["1", "2", "3", "4", "5", "5", "4.5", " 3 ", "5.0", "0", "6", "-3", "nan",
                        "inf", "five", ""])
DATE = st.sampled_from(["2015-01-01", "2016-02-29", "2015-02-30", "9999-12-31", " 2012-01-01 ",
                        "1600000000", "978300760", "1e20", "yesterday", ""])
TEXT = st.one_of(
    st.sampled_from(["", "Great", '"', '"a,b"', 'He said "hi', "<br />", "&amp;", "é", "✓", "a::b"]),
    st.text(alphabet='ab1.-:,;|\t"\r é\x00', max_size=6),
)
# (header, separator, a strategy per field); the Amazon header has all 15 columns
KINDS = [
    ("\t".join(AMAZON_COLUMNS), "\t",
     [{"customer_id": ID, "product_id": ID, "star_rating": STAR, "review_date": DATE}.get(c, TEXT)
      for c in AMAZON_COLUMNS]),
    ("star_rating\tproduct_id\tcustomer_id", "\t", [STAR, ID, ID]),
    ("userId,movieId,rating,timestamp", ",", [ID, ID, STAR, DATE]),
    ("", "::", [ID, ID, STAR, DATE]),
    ("", "\t", [ID, ID, STAR, DATE]),
    ("u,i,r,ts,t", ",", [ID, ID, STAR, DATE, TEXT]),
    ("u;i;r;ts;t", ";", [ID, ID, STAR, DATE, TEXT]),
]  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(directory: Path, data: bytes, name: str) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def check_frame(frame: pd.DataFrame, report) -> None:
    """The documented contract of every loader's output."""
    assert list(frame.columns) == list(RATINGS_COLUMNS)
    assert len(frame) == report.rows_read > 0
    assert report.lines_read == report.rows_read + report.rows_skipped
    assert report.rows_skipped == sum(report.skip_reasons.values())
    for col in ("customer_id", "product_id"):
        assert frame[col].dtype == np.int64 or isinstance(frame[col].dtype, pd.CategoricalDtype)
        assert not frame[col].isna().any()
    stars = frame["star_rating"].to_numpy()
    assert stars.dtype == np.float32 and np.isfinite(stars).all() and (stars >= 0).all()
    dates = frame["review_date"]
    assert dates.dtype == "datetime64[us]"
    ok = dates.dropna()
    assert ((ok >= pd.Timestamp("1677-09-22")) & (ok <= pd.Timestamp("2262-04-11"))).all()
    assert isinstance(frame["product_title"].dtype, pd.CategoricalDtype)


def load_every_way(path: Path) -> None:
    """detect_format and every format on ``path``: a valid frame, or a RecsysError."""
    try:
        detect_format(path)
    except RecsysError:
        pass
    for fmt in (None, "amazon", "movielens", "csv", "parquet"):
        for options in ({}, MAPPING) if fmt in (None, "csv", "parquet") else ({},):
            try:
                frame, report = load_ratings(path, fmt, **options)
            except RecsysError:
                continue
            check_frame(frame, report)


@st.composite
def text_files(draw) -> bytes:
    header, sep, fields = draw(st.sampled_from(KINDS))
    lines = [header] if header else []
    for _ in range(draw(st.integers(0, 12))):
        row = [draw(f) for f in fields]
        damage = draw(st.sampled_from(["none"] * 6 + ["drop", "add", "blank", "noise"]))
        if damage == "drop":
            row.pop()
        elif damage == "add":
            row.append(draw(TEXT))
        elif damage == "noise":
            row = draw(st.lists(TEXT, max_size=5))
        lines.append("" if damage == "blank" else sep.join(row))
    eol = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    data = eol.join(lines).encode("utf-8") + draw(st.sampled_from([b"", eol.encode()]))
    if draw(st.booleans()):  # raw bytes somewhere: latin-1, BOM, NUL, a lone UTF-8 lead byte
        at = draw(st.integers(0, len(data)))
        raw = draw(st.sampled_from([b"\xe9", b"\xff\xfe", b"\x00", b"\xef\xbb\xbf", b"\xc3"]))
        data = data[:at] + raw + data[at:]
    if draw(st.integers(0, 3)) == 0:
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
    return data


@FUZZ
@given(data=text_files(), name=st.sampled_from(["r.tsv", "u.data", "ratings.csv", "x.gz"]))
def test_text_files_load_or_raise_recsys_errors(fuzz_dir: Path, data: bytes, name: str) -> None:
    load_every_way(_write(fuzz_dir, data, name))


@FUZZ
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"\x1f\x8b", b"PAR1"]))
def test_arbitrary_bytes_load_or_raise_recsys_errors(fuzz_dir: Path, data: bytes, prefix: bytes) -> None:
    load_every_way(_write(fuzz_dir, prefix + data, "blob"))


_N = 4
COLUMNS = st.sampled_from([
    pa.array([1, 2, None, 2], pa.int64()),
    pa.array([1.0, np.nan, np.inf, -3.0], pa.float64()),
    pa.array([4.0, 3.0, 5.0, 2.0], pa.float32()),
    pa.array(["1", "", None, "x"], pa.string()),
    pa.array(["2015-01-01", "garbage", "1600000000", None], pa.large_string()),
    pa.array([b"\xff\xfe", b"ok", None, b""], pa.binary()),
    pa.array([[1], [1, 2], None, []], pa.list_(pa.int64())),
    pa.array([{"a": 1}, None, {"a": 2}, {"a": 3}]),
    pa.array([True, False, None, True]),
    pa.array([0, 10**15, None, -(10**15)], pa.timestamp("us", tz="Europe/Paris")),
    pa.array([dt.date(2015, 1, 1), None, dt.date(1, 1, 1), dt.date(9999, 12, 31)], pa.date32()),
    pa.array(["a", "b", "a", None]).dictionary_encode(),
    pa.nulls(_N),
    pa.array([Decimal("1.5"), None, Decimal("-2"), Decimal("4")], pa.decimal128(5, 2)),
])  # fmt: skip


@FUZZ
@given(cols=st.fixed_dictionaries({k: COLUMNS for k in ("u", "i", "r", "ts", "t")}))
def test_parquet_columns_of_any_type_load_or_raise_recsys_errors(fuzz_dir: Path, cols: dict) -> None:
    path = fuzz_dir / "t.parquet"
    pq.write_table(pa.table(cols), path)
    try:
        frame, report = load_table(path, **MAPPING)
    except RecsysError:
        return
    check_frame(frame, report)


@pytest.mark.parametrize("fmt", ["amazon", "movielens", "csv"])
def test_text_generator_yields_loadable_files(fuzz_dir: Path, fmt: str) -> None:
    """Generated files do load in every text format, so the frame checks above are not vacuous."""

    def loads(data: bytes) -> bool:
        try:
            frame, report = load_ratings(_write(fuzz_dir, data, "g"), fmt, **(MAPPING if fmt == "csv" else {}))
        except RecsysError:
            return False
        return len(frame) >= 3 and report.rows_skipped >= 1

    once = settings(derandomize=True, database=None, max_examples=500, phases=[Phase.generate])
    data = find(text_files(), loads, settings=once)  # no shrinking: any such file will do
    assert loads(data)
