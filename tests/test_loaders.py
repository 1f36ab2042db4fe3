"""Loaders: exact frames and reports on small hand-written files, against independent expectations.

Every file is written into ``tmp_path`` by the test itself. The randomized test compares the
Amazon loader against a slow pure-Python reference parser written here from the spec.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as tm
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.loaders import (
    LoadReport,
    detect_format,
    load_amazon_reviews,
    load_movielens,
    load_ratings,
    load_table,
)
from recsys.data.schema import AMAZON_COLUMNS, RATINGS_COLUMNS
from recsys.errors import DataError

HEADER = "\t".join(AMAZON_COLUMNS)


def amazon_line(
    customer="10",
    product="B001",
    title="A Movie",
    star="5",
    date="2015-08-31",
    body="Great.",
    headline="ok",
    review_id="R1",
) -> str:
    fields = dict(
        marketplace="US",
        customer_id=customer,
        review_id=review_id,
        product_id=product,
        product_parent="123",
        product_title=title,
        product_category="Digital_Video_Download",
        star_rating=star,
        helpful_votes="0",
        total_votes="1",
        vine="N",
        verified_purchase="Y",
        review_headline=headline,
        review_body=body,
        review_date=date,
    )
    return "\t".join(fields[c] for c in AMAZON_COLUMNS)


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def cat(values, categories=None) -> pd.Categorical:
    """A Categorical of strings with sorted categories (NaN for None)."""
    if categories is None:
        categories = sorted({v for v in values if v is not None})
    return pd.Categorical(values, categories=pd.Index(categories, dtype="str"))


def frame(customer, product, title, star, date) -> pd.DataFrame:
    """The expected ratings frame, built by hand with the documented dtypes."""
    n = len(star)
    return pd.DataFrame(
        {
            "customer_id": customer,
            "product_id": product,
            "product_title": title if title is not None else cat([None] * n, []),
            "star_rating": np.asarray(star, dtype=np.float32),
            "review_date": pd.to_datetime(pd.Series(date, dtype=object)).astype("datetime64[us]")
            if date is not None
            else pd.Series(np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")),
        },
        columns=list(RATINGS_COLUMNS),
    )


def same_load(a: tuple[pd.DataFrame, LoadReport], b: tuple[pd.DataFrame, LoadReport]) -> None:
    tm.assert_frame_equal(a[0], b[0])
    da, db = a[1].to_dict(), b[1].to_dict()
    for d in (da, db):
        d.pop("seconds")
        d.pop("source")
    assert da == db


# --------------------------------------------------------------------------------------------
# Amazon
# --------------------------------------------------------------------------------------------


def test_amazon_exact_frame(tmp_path):
    lines = [
        HEADER,
        amazon_line("10", "B002", "Zed", "5", "2015-08-31"),
        amazon_line("7", "B001", "Alpha", "1", "2014-01-02"),
        amazon_line("10", "B001", "Alpha", "3", ""),  # no date -> NaT
        amazon_line("8", "B003", "", "4", "2013-12-31"),  # no title -> NaN
    ]
    path = write(tmp_path / "r.tsv", "\n".join(lines) + "\n")
    df, rep = load_amazon_reviews(path)
    expected = frame(
        np.array([10, 7, 10, 8], dtype=np.int64),
        cat(["B002", "B001", "B001", "B003"]),
        cat(["Zed", "Alpha", "Alpha", None]),
        [5, 1, 3, 4],
        ["2015-08-31", "2014-01-02", None, "2013-12-31"],
    )
    tm.assert_frame_equal(df, expected)
    assert rep.format == "amazon"
    assert rep.columns == list(AMAZON_COLUMNS)
    assert (rep.lines_read, rep.rows_read, rep.rows_skipped) == (4, 4, 0)
    assert rep.skip_reasons == {} and rep.skipped_lines == []
    assert rep.null_counts == {
        **dict.fromkeys(AMAZON_COLUMNS, 0),
        "product_title": 1,
        "review_date": 1,
    }
    assert rep.invalid_utf8_lines == 0 and rep.bad_dates == 0
    json.dumps(rep.to_dict())
    assert "read 4 rows" in rep.summary()


def test_amazon_malformed_lines_are_counted_with_line_numbers(tmp_path, caplog):
    good = amazon_line()
    lines = [
        HEADER,  # 1
        good,  # 2
        good + "\textra",  # 3 too many fields
        "\t".join(good.split("\t")[:10]),  # 4 too few fields
        "",  # 5 blank line in the middle
        amazon_line(star="five"),  # 6
        amazon_line(star="6"),  # 7
        amazon_line(star="0"),  # 8
        amazon_line(star="4.5"),  # 9
        amazon_line(star=""),  # 10
        amazon_line(customer=""),  # 11
        amazon_line(product=""),  # 12
        amazon_line(star=" 4 "),  # 13 valid: spaces allowed
        amazon_line(star="2.0"),  # 14 valid: integral
    ]
    path = write(tmp_path / "r.tsv", "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="recsys"):
        df, rep = load_amazon_reviews(path)
    assert df["star_rating"].tolist() == [5.0, 4.0, 2.0]
    assert (rep.lines_read, rep.rows_read, rep.rows_skipped) == (13, 3, 10)
    assert rep.skip_reasons == {
        "wrong field count": 3,
        "missing customer_id/product_id": 2,
        "non-numeric star_rating": 2,
        "non-integer star_rating": 1,
        "star_rating outside 1-5": 2,
    }
    assert rep.skipped_lines == [
        (3, "wrong field count"),
        (4, "wrong field count"),
        (5, "wrong field count"),
        (6, "non-numeric star_rating"),
        (7, "star_rating outside 1-5"),
        (8, "star_rating outside 1-5"),
        (9, "non-integer star_rating"),
        (10, "non-numeric star_rating"),
        (11, "missing customer_id/product_id"),
        (12, "missing customer_id/product_id"),
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 10 malformed lines" in warnings[0].getMessage()
    assert "first at lines 3, 4, 5" in rep.summary()


def test_amazon_max_examples(tmp_path):
    lines = [HEADER] + [amazon_line(star="x")] * 5 + [amazon_line()]
    path = write(tmp_path / "r.tsv", "\n".join(lines))
    _, rep = load_amazon_reviews(path, max_examples=2)
    assert rep.skipped_lines == [(2, "non-numeric star_rating"), (3, "non-numeric star_rating")]
    assert rep.rows_skipped == 5
    assert rep.summary().count("first at lines 2, 3, ...") == 1


def test_amazon_quotes_and_html_are_not_quoting(tmp_path):
    lines = [
        HEADER,
        amazon_line("1", "B1", 'The "Best', body='He said "hi <br />and left'),
        amazon_line("2", "B2", "Plain", body='"'),
        amazon_line("3", "B3", '"Quoted"', body="&quot;x&quot;"),
        amazon_line("4", "B4", "Tail", body='ends with quote"'),
    ]
    path = write(tmp_path / "r.tsv", "\n".join(lines) + "\n")
    df, rep = load_amazon_reviews(path)
    assert rep.rows_read == 4 and rep.rows_skipped == 0
    assert df["product_title"].tolist() == ['The "Best', "Plain", '"Quoted"', "Tail"]
    assert df["customer_id"].tolist() == [1, 2, 3, 4]


def test_amazon_crlf_and_missing_final_newline_match_lf(tmp_path):
    lines = [
        HEADER,
        amazon_line("1"),
        amazon_line("2", star="3"),
        amazon_line("3", date="2001-02-03"),
    ]
    ref = load_amazon_reviews(write(tmp_path / "lf.tsv", "\n".join(lines) + "\n"))
    crlf = load_amazon_reviews(write(tmp_path / "crlf.tsv", "\r\n".join(lines) + "\r\n"))
    no_nl = load_amazon_reviews(write(tmp_path / "nonl.tsv", "\n".join(lines)))
    crlf_no_nl = load_amazon_reviews(write(tmp_path / "crlf2.tsv", "\r\n".join(lines)))
    for other in (crlf, no_nl, crlf_no_nl):
        same_load(ref, other)
    assert ref[1].lines_read == 3
    assert ref[0]["review_date"].iloc[2] == pd.Timestamp("2001-02-03")


def test_amazon_trailing_blank_line_is_malformed_but_final_newline_is_not(tmp_path):
    path = write(tmp_path / "r.tsv", HEADER + "\n" + amazon_line() + "\n\n")
    _, rep = load_amazon_reviews(path)
    assert (rep.lines_read, rep.rows_read) == (2, 1)
    assert rep.skipped_lines == [(3, "wrong field count")]


def test_amazon_header_with_bom(tmp_path):
    text = "\ufeff" + HEADER + "\n" + amazon_line() + "\n"
    df, rep = load_amazon_reviews(write(tmp_path / "r.tsv", text))
    assert rep.columns == list(AMAZON_COLUMNS) and len(df) == 1


def test_amazon_gzip_detected_by_magic_bytes(tmp_path):
    text = "\n".join([HEADER, amazon_line("1"), amazon_line("2", "B2", "Other", "2")]) + "\n"
    plain = load_amazon_reviews(write(tmp_path / "r.tsv", text))
    gz = load_amazon_reviews(write(tmp_path / "r.tsv.gz", gzip.compress(text.encode())))
    disguised = load_amazon_reviews(write(tmp_path / "noext.tsv", gzip.compress(text.encode())))
    same_load(plain, gz)
    same_load(plain, disguised)


def test_amazon_invalid_utf8_row_is_kept_with_replacement(tmp_path):
    bad_title = amazon_line("1", "B1", "Caf@").encode().replace(b"@", b"\xe9")  # latin-1 byte
    bad_body = amazon_line("2", "B2", "Fine", body="x@y").encode().replace(b"@", b"\xff\xfe")
    bad_and_malformed = b"junk\xff\tline"
    ok = amazon_line("3", "B3", "Ünïcode ✓").encode()
    data = b"\n".join([HEADER.encode(), bad_title, bad_body, bad_and_malformed, ok]) + b"\n"
    df, rep = load_amazon_reviews(write(tmp_path / "r.tsv", data))
    assert df["product_title"].tolist() == ["Caf\ufffd", "Fine", "Ünïcode ✓"]
    assert rep.invalid_utf8_lines == 2  # the malformed line is not counted: it is not valid
    assert rep.rows_read == 3 and rep.skipped_lines == [(4, "wrong field count")]


def test_amazon_lone_cr_inside_a_field_is_not_a_line_break(tmp_path):
    data = "\n".join([HEADER, amazon_line("1", title="a\rb", body="x\ry"), amazon_line("2")]) + "\n"
    df, rep = load_amazon_reviews(write(tmp_path / "r.tsv", data))
    assert rep.rows_read == 2 and rep.rows_skipped == 0
    assert df["product_title"].tolist() == ["a b", "A Movie"]


def test_amazon_null_counts_match_brute_force(tmp_path):
    rng = random.Random(1)
    lines = [HEADER]
    for i in range(300):
        fields = amazon_line(str(i % 37 + 1), f"B{i % 11}", f"T{i % 5}", str(i % 5 + 1)).split("\t")
        for j in range(len(fields)):
            if j not in (1, 3, 7) and rng.random() < 0.2:
                fields[j] = ""
        if rng.random() < 0.05:
            fields[7] = "bad"  # invalid rows must not count
            fields[0] = ""
        lines.append("\t".join(fields))
    path = write(tmp_path / "r.tsv", "\n".join(lines) + "\n")
    _, rep = load_amazon_reviews(path)
    expected = dict.fromkeys(AMAZON_COLUMNS, 0)
    for line in lines[1:]:
        fields = line.split("\t")
        if fields[7] == "bad":
            continue
        for name, value in zip(AMAZON_COLUMNS, fields, strict=True):
            expected[name] += value == ""
    assert rep.null_counts == expected
    assert sum(expected.values()) > 100


def test_amazon_duplicate_lines_are_all_kept_in_file_order(tmp_path):
    rng = random.Random(2)
    pool = [amazon_line(str(i), f"B{i % 3}", "T", str(i % 5 + 1), review_id=f"R{i}") for i in range(20)]
    lines = [rng.choice(pool) for _ in range(200)] + [amazon_line(star="zero")] * 3
    path = write(tmp_path / "r.tsv", "\n".join([HEADER, *lines]) + "\n")
    df, rep = load_amazon_reviews(path)
    valid = [ln.split("\t") for ln in lines if "zero" not in ln]
    assert rep.rows_read == len(df) == 200 and len({tuple(v) for v in valid}) <= 20
    assert df["customer_id"].tolist() == [int(v[1]) for v in valid]


def test_amazon_multi_block_equals_single_block(tmp_path):
    lines = [HEADER]
    for i in range(60):
        lines.append(
            amazon_line(
                str(i % 9),
                f"B{i % 7}",
                f'Title {i % 4} "q',
                str(i % 5 + 1),
                f"2010-01-{i % 28 + 1:02d}",
            )
        )
        if i % 13 == 0:
            lines.append("broken\tline")
    lines.append(amazon_line("x1", star="9"))
    text = "\r\n".join(lines)  # CRLF and no final newline, crossing block boundaries
    path = write(tmp_path / "r.tsv", text)
    single = load_amazon_reviews(path, block_size=1 << 20)
    for block_size in (64, 1, 333):
        same_load(single, load_amazon_reviews(path, block_size=block_size))
    assert single[1].rows_skipped == 6


def test_amazon_bad_dates_are_kept_as_nat(tmp_path):
    lines = [
        HEADER,
        amazon_line("1", date="2015-02-30"),
        amazon_line("2", date="2016-02-29"),
        amazon_line("3", date="yesterday"),
        amazon_line("4", date=" 2014-05-06 "),
        amazon_line("5", date="2015-13-01"),
        amazon_line("6", date=""),
    ]
    df, rep = load_amazon_reviews(write(tmp_path / "r.tsv", "\n".join(lines)))
    assert df["review_date"].tolist()[1] == pd.Timestamp("2016-02-29")
    assert df["review_date"].tolist()[3] == pd.Timestamp("2014-05-06")
    assert df["review_date"].isna().tolist() == [True, False, True, False, True, True]
    assert rep.bad_dates == 3 and rep.null_counts["review_date"] == 1 and rep.rows_read == 6


def test_amazon_string_ids_become_categories(tmp_path):
    lines = [HEADER, amazon_line("007", "B1"), amazon_line("7", "2"), amazon_line("abc", "1")]
    df, _ = load_amazon_reviews(write(tmp_path / "r.tsv", "\n".join(lines)))
    tm.assert_series_equal(
        df["customer_id"], pd.Series(cat(["007", "7", "abc"]), name="customer_id")
    )
    tm.assert_series_equal(df["product_id"], pd.Series(cat(["B1", "2", "1"]), name="product_id"))
    lines = [HEADER, amazon_line("5", "11"), amazon_line("6", "3")]
    df, _ = load_amazon_reviews(write(tmp_path / "r2.tsv", "\n".join(lines)))
    assert df["product_id"].dtype == np.int64 and df["product_id"].tolist() == [11, 3]


def test_amazon_header_may_omit_title_and_date_and_reorder(tmp_path):
    text = "star_rating\tproduct_id\tcustomer_id\n5\tB1\t1\n3\tB2\t2\n"
    df, rep = load_amazon_reviews(write(tmp_path / "r.tsv", text))
    expected = frame(np.array([1, 2], dtype=np.int64), cat(["B1", "B2"]), None, [5, 3], None)
    tm.assert_frame_equal(df, expected)
    assert rep.null_counts == {"star_rating": 0, "product_id": 0, "customer_id": 0}


def test_amazon_missing_required_columns_are_named(tmp_path):
    header = "\t".join(c for c in AMAZON_COLUMNS if c not in ("star_rating", "product_id"))
    path = write(tmp_path / "r.tsv", header + "\n" + "x\t" * 12 + "x\n")
    with pytest.raises(DataError) as err:
        load_amazon_reviews(path)
    msg = str(err.value)
    assert "['product_id', 'star_rating']" in msg and "review_body" in msg


def test_amazon_nothing_valid_reports_the_skips(tmp_path):
    lines = [HEADER] + ["a\tb"] * 12
    with pytest.raises(DataError) as err:
        load_amazon_reviews(write(tmp_path / "r.tsv", "\n".join(lines) + "\n"))
    msg = str(err.value)
    assert "nothing valid remains" in msg and "0 of 12 lines valid" in msg
    assert "wrong field count: 12" in msg and "lines 2, 3, 4" in msg
    for text in ("", HEADER + "\n"):
        with pytest.raises(DataError):
            load_amazon_reviews(write(tmp_path / "e.tsv", text))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_amazon_reviews(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="directory"):
        load_amazon_reviews(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_ratings(tmp_path / "nope.csv")


# --------------------------------------------------------------------------------------------
# Randomized: the loader against a slow pure-Python reference parser
# --------------------------------------------------------------------------------------------


def _reference_amazon(data: bytes) -> tuple[pd.DataFrame, dict]:
    """Parse an Amazon TSV the slow, obvious way, following the documented rules."""
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()
    header = raw_lines[0].rstrip(b"\r").decode().split("\t")
    rows, skipped = [], []
    nulls = dict.fromkeys(header, 0)
    bad_utf8 = bad_dates = 0
    for number, raw in enumerate(raw_lines[1:], start=2):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        raw = raw.replace(b"\r", b" ")
        try:
            line, invalid = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            line, invalid = raw.decode("utf-8", errors="replace"), True
        f = line.split("\t")
        if len(f) != len(header):
            skipped.append((number, "wrong field count"))
            continue
        r = dict(zip(header, f, strict=True))
        if not r["customer_id"] or not r["product_id"]:
            skipped.append((number, "missing customer_id/product_id"))
            continue
        try:
            star = float(r["star_rating"].strip())
        except ValueError:
            star = math.nan
        if not math.isfinite(star):
            skipped.append((number, "non-numeric star_rating"))
            continue
        if star != int(star):
            skipped.append((number, "non-integer star_rating"))
            continue
        if not 1 <= star <= 5:
            skipped.append((number, "star_rating outside 1-5"))
            continue
        date = None
        if r["review_date"]:
            text = r["review_date"].strip()
            try:
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                    raise ValueError(text)
                date = dt.date.fromisoformat(text)
            except ValueError:
                bad_dates += 1
        for k, v in r.items():
            nulls[k] += v == ""
        bad_utf8 += invalid
        rows.append((r["customer_id"], r["product_id"], r["product_title"] or None, star, date))

    def ids(values):
        if all(re.fullmatch(r"-?(0|[1-9][0-9]{0,17})", v) for v in values):
            return np.array([int(v) for v in values], dtype=np.int64)
        return cat(values)

    cols = list(zip(*rows, strict=True)) if rows else [[]] * 5
    df = frame(
        ids(list(cols[0])),
        ids(list(cols[1])),
        cat(list(cols[2])),
        list(cols[3]),
        [pd.NaT if d is None else pd.Timestamp(d) for d in cols[4]],
    )
    counts = Counter(reason for _, reason in skipped)
    report = {
        "lines_read": len(raw_lines) - 1,
        "rows_read": len(rows),
        "skip_reasons": dict(counts),
        "skipped_lines": skipped[:10],
        "null_counts": nulls,
        "invalid_utf8_lines": bad_utf8,
        "bad_dates": bad_dates,
    }
    return df, report


def _random_amazon_file(rng: random.Random) -> bytes:
    titles = ["Plain", 'Quote " odd', "<b>HTML</b> &amp;", "Ünï ✓", "", "Comma, yes", '""']
    stars = ["1", "2", "3", "4", "5"] * 6 + ["", "five", "0", "6", "4.5", " 3", "5.0", "nan", "-1"]
    dates = ["2015-08-31", "2000-02-29", "1999-12-31", "", "2015-02-30", "bad", " 2012-01-01"]
    customers = [str(rng.randrange(1, 50)) for _ in range(30)] + [""]
    if rng.random() < 0.3:
        customers.append("A1B2")
    lines = [HEADER.encode()]
    for _ in range(rng.randrange(1, 120)):
        kind = rng.random()
        if kind < 0.05 and len(lines) > 1:
            lines.append(rng.choice(lines[1:]))  # exact duplicate
            continue
        line = amazon_line(
            rng.choice(customers),
            rng.choice(["B1", "B2", "X9", "", "0042"]),
            rng.choice(titles),
            rng.choice(stars),
            rng.choice(dates),
            body=rng.choice(['"', 'a "b" c', "<br />", "", "tab-free text"]),
            review_id=f"R{rng.randrange(5)}",
        ).encode()
        if kind < 0.10:
            line += b"\textra"
        elif kind < 0.14:
            line = line.rsplit(b"\t", 1)[0]
        elif kind < 0.17:
            line = b""
        elif kind < 0.20:
            line = line.replace(b"Plain", b"Pl\xe9in").replace(b"tab-free", b"\xff\xfe")
        elif kind < 0.22:
            line = line.replace(b"text", b"te\rxt")
        lines.append(line)
    eol = b"\r\n" if rng.random() < 0.3 else b"\n"
    data = eol.join(lines)
    return data + eol if rng.random() < 0.7 else data


@pytest.mark.parametrize("seed", range(25))
def test_amazon_matches_reference_parser(tmp_path, seed):
    rng = random.Random(seed)
    data = _random_amazon_file(rng)
    path = write(tmp_path / "r.tsv", data)
    try:
        ref_df, ref_report = _reference_amazon(data)
    except ValueError:  # no valid rows: the loader must refuse too
        ref_df = None
    if ref_df is None or len(ref_df) == 0:
        with pytest.raises(DataError, match="nothing valid"):
            load_amazon_reviews(path)
        return
    for block_size in (1 << 20, rng.randrange(1, 400)):
        df, report = load_amazon_reviews(path, block_size=block_size)
        tm.assert_frame_equal(df, ref_df)
        got = {k: v for k, v in report.to_dict().items() if k in ref_report}
        expected = {**ref_report, "skipped_lines": [list(x) for x in ref_report["skipped_lines"]]}
        assert got == expected
        assert report.rows_skipped == report.lines_read - report.rows_read


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------


def test_movielens_u_data_with_latin1_titles(tmp_path):
    write(
        tmp_path / "u.data",
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n",
    )
    write(
        tmp_path / "u.item",
        "242|Caf\xe9 (1996)|24-Jan-1997||http://x|0|0\n302|L.A. Confidential (1997)|01-Jan-1997||http://y|0|1\n".encode(
            "latin-1"
        ),
    )
    df, rep = load_movielens(tmp_path / "u.data")
    expected = frame(
        np.array([196, 186, 22], dtype=np.int64),
        np.array([242, 302, 377], dtype=np.int64),
        cat(["Café (1996)", "L.A. Confidential (1997)", None]),
        [3, 3, 1],
        pd.to_datetime([881250949, 891717742, 878887116], unit="s"),
    )
    tm.assert_frame_equal(df, expected)
    assert rep.format == "movielens" and rep.columns == [
        "user_id",
        "item_id",
        "rating",
        "timestamp",
    ]
    assert rep.lines_read == 3 and rep.rows_read == 3
    no_titles, _ = load_movielens(tmp_path / "u.data", titles=False)
    assert no_titles["product_title"].isna().all()


def test_movielens_ratings_dat_with_malformed_lines(tmp_path):
    text = (
        "1::1193::5::978300760\n"  # 1
        "1::661::3\n"  # 2 too few fields
        "2::1193::6::978300761\n"  # 3 outside 0.5-5
        "2::abc::4::978300762\n"  # 4 non-integer id
        "3::1193::x::978300763\n"  # 5 non-numeric
        "::1193::4::978300764\n"  # 6 missing id
        "3::661::0.5::notatime\n"  # 7 valid, bad timestamp
    )
    write(tmp_path / "ratings.dat", text)
    write(
        tmp_path / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation\n",
    )
    df, rep = load_movielens(tmp_path / "ratings.dat")
    expected = frame(
        np.array([1, 3], dtype=np.int64),
        np.array([1193, 661], dtype=np.int64),
        cat(["One Flew Over the Cuckoo's Nest (1975)", "James and the Giant Peach (1996)"]),
        [5, 0.5],
        [pd.Timestamp(978300760, unit="s"), pd.NaT],
    )
    tm.assert_frame_equal(df, expected)
    assert rep.skipped_lines == [
        (2, "wrong field count"),
        (3, "rating outside 0.5-5"),
        (4, "non-integer user/item id"),
        (5, "non-numeric rating"),
        (6, "missing user/item id"),
    ]
    assert rep.bad_dates == 1 and rep.lines_read == 7


def test_movielens_ratings_csv_with_quoted_crlf_titles(tmp_path):
    write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,11,4.5,964982703\n1,2,0.5,964981247\n2,11,5.0,964982224\n",
    )
    write(
        tmp_path / "movies.csv",
        'movieId,title,genres\r\n11,"American President, The (1995)",Comedy|Drama|Romance\r\n2,Jumanji (1995),Adventure\r\n',
    )
    df, rep = load_movielens(tmp_path / "ratings.csv")
    expected = frame(
        np.array([1, 1, 2], dtype=np.int64),
        np.array([11, 2, 11], dtype=np.int64),
        cat(["American President, The (1995)", "Jumanji (1995)", "American President, The (1995)"]),
        [4.5, 0.5, 5.0],
        pd.to_datetime([964982703, 964981247, 964982224], unit="s"),
    )
    tm.assert_frame_equal(df, expected)
    assert rep.columns == ["userId", "movieId", "rating", "timestamp"]
    # an explicit titles path, and a multi-block read, give the same frame
    other = write(tmp_path / "titles.csv", (tmp_path / "movies.csv").read_text())
    (tmp_path / "movies.csv").unlink()
    df2, _ = load_movielens(tmp_path / "ratings.csv", titles=other, block_size=7)
    tm.assert_frame_equal(df2, expected)
    df3, _ = load_movielens(tmp_path / "ratings.csv")  # sibling gone: no titles, no error
    assert df3["product_title"].isna().all()
    with pytest.raises(DataError, match="no such file"):
        load_movielens(tmp_path / "ratings.csv", titles=tmp_path / "missing.csv")


def test_movielens_empty_and_unrecognised(tmp_path):
    with pytest.raises(DataError, match="nothing valid"):
        load_movielens(write(tmp_path / "u.data", ""))
    with pytest.raises(DataError, match="MovieLens"):
        load_movielens(write(tmp_path / "r.txt", "hello world\n"))


# --------------------------------------------------------------------------------------------
# Any CSV / Parquet with a mapping
# --------------------------------------------------------------------------------------------


def test_load_table_csv_with_mapping_and_sniffed_separator(tmp_path):
    text = (
        "who;what;stars;when;name\n"
        'a;x;5;2020-01-02;"Hello; world"\n'  # 2
        "b;y;four;2020-01-03;z\n"  # 3 non-numeric rating
        "\n"  # 4 blank
        "c;x;3;not a date;q\n"  # 5 valid, bad date
        "d;z;2;2020-01-05\n"  # 6 too few fields
        ";z;2;2020-01-05;t\n"  # 7 missing user
        'a;x;5;2020-01-02;"Hello; world"\n'  # 8 duplicate of 2
    )
    df, rep = load_table(
        write(tmp_path / "t.csv", text),
        user="who",
        item="what",
        rating="stars",
        timestamp="when",
        title="name",
    )
    expected = frame(
        cat(["a", "c", "a"]),
        cat(["x", "x", "x"]),
        cat(["Hello; world", "q", "Hello; world"]),
        [5, 3, 5],
        [pd.Timestamp("2020-01-02"), pd.NaT, pd.Timestamp("2020-01-02")],
    )
    tm.assert_frame_equal(df, expected)
    assert rep.skipped_lines == [
        (3, "non-numeric rating"),
        (4, "wrong field count"),
        (6, "wrong field count"),
        (7, "missing user/item id"),
    ]
    assert rep.skip_reasons == {
        "wrong field count": 2,
        "missing user/item id": 1,
        "non-numeric rating": 1,
    }
    assert (rep.lines_read, rep.rows_read, rep.bad_dates) == (7, 3, 1)
    assert rep.columns == ["who", "what", "stars", "when", "name"]


def test_load_table_zoned_timestamps_become_utc(tmp_path):
    # 23:30 in New York on 1 Jan 2020 (EST, UTC-5) is 04:30 UTC on 2 Jan; a naive column is kept
    local = pd.to_datetime(["2020-01-01 23:30:00", "2020-07-01 12:00:00"]).tz_localize("America/New_York")
    table = pa.table({"u": [1, 2], "i": [3, 4], "r": [4.0, 5.0],
                      "zoned": pa.array(local, pa.timestamp("us", tz="America/New_York")),
                      "naive": pa.array(local.tz_localize(None), pa.timestamp("ms"))})  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet")
    for column, expected in (("zoned", ["2020-01-02 04:30", "2020-07-01 16:00"]),
                             ("naive", ["2020-01-01 23:30", "2020-07-01 12:00"])):  # fmt: skip
        df, rep = load_table(tmp_path / "t.parquet", user="u", item="i", rating="r", timestamp=column)
        assert df["review_date"].tolist() == [pd.Timestamp(x) for x in expected]
        assert rep.bad_dates == 0


def test_load_table_parquet_with_ms_timestamps(tmp_path):
    table = pa.table(
        {
            "u": [1, 2, 2, 3],
            "i": ["m1", "m2", "m1", None],
            "r": [4.0, None, 2.5, 1.0],
            "ts": [1_600_000_000_000, 1_600_000_001_000, 1_600_000_002_500, 0],
            "extra": ["x", None, "", "y"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    df, rep = load_table(tmp_path / "t.parquet", user="u", item="i", rating="r", timestamp="ts")
    expected = frame(
        np.array([1, 2], dtype=np.int64),
        cat(["m1", "m1"]),
        None,
        [4.0, 2.5],
        pd.to_datetime([1_600_000_000_000, 1_600_000_002_500], unit="ms"),
    )
    tm.assert_frame_equal(df, expected)
    assert rep.format == "parquet" and rep.location == "row"
    assert rep.skipped_lines == [(2, "non-numeric rating"), (4, "missing user/item id")]
    assert rep.null_counts == {"u": 0, "i": 0, "r": 0, "ts": 0, "extra": 1}
    assert "rows 2, 4" in rep.summary()
    # seconds, not milliseconds, when the values are small
    pq.write_table(
        pa.table({"u": [1], "i": [2], "r": [3], "ts": [1_600_000_000]}), tmp_path / "s.parquet"
    )
    df, _ = load_table(tmp_path / "s.parquet", user="u", item="i", rating="r", timestamp="ts")
    assert df["review_date"].iloc[0] == pd.Timestamp(1_600_000_000, unit="s")


def test_load_table_gzip_csv_and_explicit_separator(tmp_path):
    text = "u|i|r\n1|2|3.5\n4|5|x\n"
    path = write(tmp_path / "t.csv.gz", gzip.compress(text.encode()))
    df, rep = load_table(path, user="u", item="i", rating="r", sep="|")
    expected = frame(
        np.array([1], dtype=np.int64), np.array([2], dtype=np.int64), None, [3.5], None
    )
    tm.assert_frame_equal(df, expected)
    assert rep.skipped_lines == [(3, "non-numeric rating")]


def test_load_table_bad_mapping_names_columns(tmp_path):
    path = write(tmp_path / "t.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DataError) as err:
        load_table(path, user="user", item="b", rating="stars")
    msg = str(err.value)
    assert "user='user'" in msg and "rating='stars'" in msg and "['a', 'b', 'c']" in msg


# --------------------------------------------------------------------------------------------
# detect_format and load_ratings
# --------------------------------------------------------------------------------------------


def test_detect_format(tmp_path):
    amazon = HEADER + "\n" + amazon_line() + "\n"
    assert detect_format(write(tmp_path / "a.tsv", amazon)) == "amazon"
    assert detect_format(write(tmp_path / "a.tsv.gz", gzip.compress(amazon.encode()))) == "amazon"
    assert detect_format(write(tmp_path / "u.data", "1\t2\t3\t881250949\n")) == "movielens"
    assert detect_format(write(tmp_path / "ratings.dat", "1::2::3::978300760\n")) == "movielens"
    assert (
        detect_format(write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n"))
        == "movielens"
    )
    assert detect_format(write(tmp_path / "x.csv", "user,item,score\n1,2,3\n")) == "csv"
    pq.write_table(pa.table({"a": [1]}), tmp_path / "x.bin")
    assert detect_format(tmp_path / "x.bin") == "parquet"
    with pytest.raises(DataError, match="--format"):
        detect_format(write(tmp_path / "blob", b"\x00\x01\x02binary"))
    with pytest.raises(DataError, match="empty"):
        detect_format(write(tmp_path / "empty", b""))


def test_load_ratings_dispatches(tmp_path):
    amazon = write(tmp_path / "a.tsv", HEADER + "\n" + amazon_line() + "\n")
    df, rep = load_ratings(amazon)
    assert rep.format == "amazon" and len(df) == 1
    ml = write(tmp_path / "ratings.dat", "1::2::3::978300760\n")
    assert load_ratings(ml, titles=False)[1].format == "movielens"
    canonical = write(
        tmp_path / "c.csv", "customer_id,product_id,star_rating,review_date\n1,B1,4,2020-01-01\n"
    )
    df, rep = load_ratings(canonical)
    assert rep.format == "csv" and df["review_date"].iloc[0] == pd.Timestamp("2020-01-01")
    assert list(df.columns) == list(RATINGS_COLUMNS)
    other = write(tmp_path / "o.csv", "u,i,r\n1,2,3\n")
    with pytest.raises(DataError, match="user=.*item=.*rating="):
        load_ratings(other)
    df, _ = load_ratings(other, user="u", item="i", rating="r")
    assert df["star_rating"].tolist() == [3.0]
    with pytest.raises(DataError, match="unknown format"):
        load_ratings(other, format="excel")


# --------------------------------------------------------------------------------------------
# Hostile and damaged input: a DataError that names the file, never its content
# --------------------------------------------------------------------------------------------

SECRET = "root:$y$j9T$SECRETHASH$x:19000:0:99999:7:::"


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "SECRETHASH" not in msg and "\\x" not in msg
    return msg


def test_damaged_gzip_is_a_data_error(tmp_path):
    data = gzip.compress(("\n".join([HEADER] + [amazon_line(str(i)) for i in range(200)]) + "\n").encode())
    truncated = write(tmp_path / "t.tsv.gz", data[: len(data) // 2])
    fake = write(tmp_path / "f.tsv.gz", b"\x1f\x8b" + bytes(range(256)) * 4)
    for path in (truncated, fake):
        assert "damaged" in _error(detect_format, path)
        for fmt, kw in (("amazon", {}), ("movielens", {}), ("csv", dict(user="a", item="b", rating="c"))):
            assert "damaged" in _error(load_ratings, path, fmt, **kw)


def test_format_and_content_mismatch(tmp_path):
    tsv = write(tmp_path / "a.tsv", HEADER + "\n" + amazon_line() + "\n")
    assert "as Parquet" in _error(load_ratings, tsv, "parquet")
    assert "as Parquet" in _error(load_table, tsv, user="customer_id", item="product_id",
                                  rating="star_rating", format="parquet")  # fmt: skip
    pq.write_table(pa.table({"u": [1], "i": [2], "r": [3.0]}), tmp_path / "p.parquet")
    for fmt in ("amazon", "movielens", "csv"):
        assert "use --format parquet" in _error(load_ratings, tmp_path / "p.parquet", fmt)
    binary = write(tmp_path / "blob", bytes(range(256)) * 40)
    assert "binary" in _error(detect_format, binary)
    for fmt, kw in (("amazon", {}), ("movielens", {}), ("csv", dict(user="a", item="b", rating="c")),
                    ("parquet", dict(user="a", item="b", rating="c"))):  # fmt: skip
        _error(load_ratings, binary, fmt, **kw)


def test_nested_or_binary_parquet_columns_are_refused_by_name(tmp_path):
    for bad in ({"u": [[1, 2], [3]]}, {"r": [{"a": 1}, {"a": 2}]}, {"t": [[1], None]}):
        cols = {"u": [1, 2], "i": ["x", "y"], "r": [4.0, 5.0], "t": [1, 2]} | bad
        path = tmp_path / "n.parquet"
        pq.write_table(pa.table(cols), path)
        name = next(iter(bad))
        msg = _error(load_table, path, user="u", item="i", rating="r", timestamp="t")
        assert f"column {name!r}" in msg and "scalar" in msg
    pq.write_table(pa.table({"u": pa.array([b"\xff\xfe", b"ok"]), "i": [1, 2], "r": [4, 5]}), path)
    assert "column 'u'" in _error(load_table, path, user="u", item="i", rating="r")


def test_errors_never_show_the_files_content(tmp_path):
    shadow = write(tmp_path / "shadow", SECRET + "\nbin:*:19000:0:99999:7:::\n")
    _error(detect_format, shadow)
    _error(load_ratings, shadow, "amazon")
    _error(load_ratings, shadow, "movielens")
    assert "not shown" in _error(load_ratings, shadow, "csv", user="u", item="i", rating="r")
    assert "not shown" in _error(load_ratings, shadow, "csv")
    _error(load_ratings, shadow, "parquet", user="u", item="i", rating="r")
    ml = write(tmp_path / "ratings.csv", "userId,movieId,rating," + SECRET + "\n1,2,3,4\n")
    assert "not shown" in _error(load_movielens, ml)


def test_not_a_regular_file_and_overlong_lines(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _error(load_ratings, fifo)
    import recsys.data.loaders.text as text

    monkeypatch.setattr(text, "MAX_LINE_BYTES", 1000)
    path = write(tmp_path / "long.tsv", HEADER + "\n" + amazon_line(body="x" * 5000) + "\n")
    assert "longer than" in _error(load_amazon_reviews, path, block_size=100)


def test_csv_timestamps_parse_what_parses_and_count_the_rest(tmp_path, caplog):
    rng = random.Random(5)
    unix = [None if rng.random() < 0.2 else 1_600_000_000 + 86_400 * i for i in range(50)]
    iso = [None if rng.random() < 0.2 else f"2020-03-{i % 28 + 1:02d} 10:{i % 60:02d}:00" for i in range(50)]
    for values, expected in (
        (unix, [pd.NaT if v is None else pd.Timestamp(v, unit="s") for v in unix]),
        (iso, [pd.NaT if v is None else pd.Timestamp(v) for v in iso]),
    ):
        text = "u,i,r,ts\n" + "".join(
            f"{k},{k % 7},4,{'not a date' if v is None else v}\n" for k, v in enumerate(values)
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="recsys"):
            df, rep = load_table(write(tmp_path / "t.csv", text), user="u", item="i", rating="r",
                                 timestamp="ts")  # fmt: skip
        assert df["review_date"].tolist() == expected
        assert rep.bad_dates == sum(v is None for v in values) > 5
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"{rep.bad_dates} unparseable dates" in warnings[0]


def test_csv_ratings_must_be_finite_and_not_negative(tmp_path):
    ratings = ["4", "-3", "nan", "inf", "", "x", "0", "2.5", "-0.0", "1e3"]
    text = "u,i,r\n" + "".join(f"{k},1,{r}\n" for k, r in enumerate(ratings))
    df, rep = load_table(write(tmp_path / "r.csv", text), user="u", item="i", rating="r")
    assert df["star_rating"].tolist() == [4.0, 0.0, 2.5, 0.0, 1000.0]
    assert rep.skip_reasons == {"non-numeric rating": 3, "negative or infinite rating": 2}
    assert [n for n, _ in rep.skipped_lines] == [3, 4, 5, 6, 7]
    pq.write_table(pa.table({"u": [1, 2, 3, 4], "i": [1, 1, 1, 1], "r": [4.0, -1.0, np.nan, np.inf]}),
                   tmp_path / "r.parquet")  # fmt: skip
    df, rep = load_table(tmp_path / "r.parquet", user="u", item="i", rating="r")
    assert df["star_rating"].tolist() == [4.0]
    assert rep.skipped_lines == [(2, "negative or infinite rating"), (3, "non-numeric rating"),
                                 (4, "negative or infinite rating")]  # fmt: skip


def test_dates_outside_the_supported_range_are_unparseable(tmp_path):
    lines = [HEADER, amazon_line("1", date="9999-12-31"), amazon_line("2", date="1600-01-01"),
             amazon_line("3", date="2262-04-11")]  # fmt: skip
    df, rep = load_amazon_reviews(write(tmp_path / "r.tsv", "\n".join(lines)))
    assert df["review_date"].isna().tolist() == [True, True, False] and rep.bad_dates == 2
    text = "u,i,r,ts\n1,1,4,1e20\n2,1,4,-1e13\n3,1,4,1600000000\n4,1,4,3000-01-01\n"
    df, rep = load_table(write(tmp_path / "t.csv", text), user="u", item="i", rating="r", timestamp="ts")
    assert df["review_date"].isna().tolist() == [True, True, False, True] and rep.bad_dates == 3
