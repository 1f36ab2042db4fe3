"""Loaders: turn a ratings source into a *ratings frame* plus a :class:`LoadReport`.

Every loader returns a :class:`pandas.DataFrame` with exactly the columns
:data:`~recsys.data.schema.RATINGS_COLUMNS`, in file order, with these dtypes:

=================  ===========================================================================
``customer_id``    ``int64`` when every id is a plain decimal integer (``"0"`` or no leading
                   zero, no sign other than ``-``, no spaces, fits in int64), else ``category``
                   of strings
``product_id``     same rule as ``customer_id`` (Amazon ASINs -> ``category``; MovieLens movie
                   ids -> ``int64``)
``product_title``  ``category`` (NaN when missing; all NaN when the source has no titles)
``star_rating``    ``float32``
``review_date``    ``datetime64[us]`` (the pandas 3 default unit), NaT when missing or invalid
=================  ===========================================================================

Categories are sorted and hold only values that occur in the returned rows, so the result does
not depend on how the file was read (block size, skipped lines).

Which rows are kept
-------------------
A line is *malformed* -- skipped, counted by reason in :attr:`LoadReport.skip_reasons` and
its line number recorded -- when its number of fields differs from the header's (blank lines
included), when an id is empty, or when its rating is not valid for the format (Amazon: an
integer 1-5; MovieLens: 0.5-5; CSV/Parquet: a finite number >= 0). Malformed lines are never
fatal unless nothing valid remains. Invalid dates are not malformed: the row is kept with NaT
and counted in :attr:`LoadReport.bad_dates`. Lines that are not UTF-8 are repaired (U+FFFD) and
counted. Whatever was dropped or repaired is logged once, at WARNING level, on the ``"recsys"``
logger. Duplicates are kept (exploration counts them, preparation removes them).

Errors are :class:`~recsys.errors.DataError` naming the file, the line and what was expected;
they never show the file's content.
"""

from .amazon import load_amazon_reviews
from .columns import DATE_DTYPE
from .detect import FORMATS, detect_format, load_ratings
from .movielens import load_movielens
from .report import LoadReport
from .table import load_table

__all__ = [
    "DATE_DTYPE", "FORMATS", "LoadReport", "detect_format", "load_amazon_reviews",
    "load_movielens", "load_ratings", "load_table",
]  # fmt: skip
