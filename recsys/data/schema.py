"""Column names shared by every loader and stage (the ratings frame's columns and dtypes are
described in :mod:`recsys.data.loaders`)."""

from __future__ import annotations

#: The 15 columns of the Amazon Customer Reviews TSV, in file order.
AMAZON_COLUMNS: tuple[str, ...] = tuple(
    "marketplace customer_id review_id product_id product_parent product_title product_category "
    "star_rating helpful_votes total_votes vine verified_purchase review_headline review_body "
    "review_date".split()
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
