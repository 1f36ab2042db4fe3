"""Column names shared by every loader and stage.

Every loader returns a *ratings frame* with the canonical columns below, whatever the source
format (Amazon reviews TSV, MovieLens, any CSV/Parquet with a column mapping):

=================  ===========================================================================
``customer_id``    who rated (int64 when every id is an integer, else a string/categorical)
``product_id``     what was rated (string/categorical; MovieLens movie ids stay integers)
``product_title``  the title, or missing when the source has none
``star_rating``    float32 rating (Amazon: 1-5 stars; MovieLens: 0.5-5 in half stars)
``review_date``    datetime64 (day resolution for Amazon), NaT when missing
=================  ===========================================================================
"""

from __future__ import annotations

#: The 15 columns of the Amazon Customer Reviews TSV, in file order.
AMAZON_COLUMNS: tuple[str, ...] = (
    "marketplace",
    "customer_id",
    "review_id",
    "product_id",
    "product_parent",
    "product_title",
    "product_category",
    "star_rating",
    "helpful_votes",
    "total_votes",
    "vine",
    "verified_purchase",
    "review_headline",
    "review_body",
    "review_date",
)

CUSTOMER = "customer_id"
PRODUCT = "product_id"
TITLE = "product_title"
RATING = "star_rating"
DATE = "review_date"

#: Columns every ratings frame has, in this order.
RATINGS_COLUMNS: tuple[str, ...] = (CUSTOMER, PRODUCT, TITLE, RATING, DATE)
#: Columns that must be present in the source for it to be usable at all.
REQUIRED_COLUMNS: tuple[str, ...] = (CUSTOMER, PRODUCT, RATING)

#: Index columns added by preparation.
USER = "user"
ITEM = "item"
