"""The rating model of the synthetic dataset: customers, what they pick, when, and how they rate it.

See :mod:`recsys.data.synthetic` for what it imitates. Every draw comes from generators seeded
by the caller's seed, in a fixed order: changing the order or the number of draws changes the
ratings of every preset.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ConfigError
from ...params import is_number
from .catalogue import GENRE_WEIGHTS, GENRES, Catalogue, alnum_strings, make_catalogue, unique_ints

logger = logging.getLogger("recsys")

_STAR_SHARES = (0.12, 0.05, 0.08, 0.15, 0.60)
_MONTH_SEASONALITY = (1.30, 1.05, 1.00, 0.95, 0.92, 0.90, 0.95, 0.95, 0.90, 0.95, 1.05, 1.25)

# Review text: not read by any stage, only there so that the written file has what a loader must
# cope with -- quotes (a field may start with one, or hold an odd number), HTML and entities,
# non-ASCII UTF-8 (2-, 3- and 4-byte), backslashes, other separators, runs of spaces and a long
# paragraph. A body is one paragraph, or (30 %) two joined by a separator.
_PARAGRAPHS = (
    "Loved it!",
    "Great show & a great cast.",
    "Not bad, not great.",
    "Terrible. What a waste of time.",
    "It's ok.",
    'As my wife says, "best show ever".',
    '"Comedy"? Not really.',
    'Bought the 12" edition by mistake.',
    "Kept buffering<br />and the picture was grainy.",
    "&quot;Meh&quot; &amp; predictable.",
    "Café scene, naïve plot, Señor Ramos ★★★★★",
    "日本語の字幕が良かった 😀",
    r"Backslashes \ and C:\Users\me, no escapes.",
    "Commas, semicolons; pipes | and :: colons.",
    "Two  spaces,   three, and a trailing one ",
    "A long one: " + "the plot twists, the cast shines, the score soars and the ending lands. " * 6,
)
_SEPARATORS = ("", " ", "<br /><br />", "<br />", " ")  # index 0: a single paragraph
# Headlines per star; the first ("Five Stars" & co.) is the most common, as in the real file.
_HEADLINES = (
    ("One Star", "Terrible", '"Comedy"? Really?'),
    ("Two Stars", "Disappointing"),
    ("Three Stars", "It's ok"),
    ("Four Stars", "Very good"),
    ("Five Stars", "Great show!", "Loved it & more"),
)


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the synthetic review generator.

    ``n_reviews`` counts every row, duplicate rows and re-reviews included; every customer
    writes at least one review and every video exists in the catalogue, though unpopular ones
    may get no review. The latent rating score is ``bias + quality + affinity_weight * affinity
    + noise`` (the affinity has unit scale), cut into stars at the quantiles ``star_shares``.
    """

    n_customers: int
    n_products: int
    n_reviews: int
    n_genres: int = 20  # at most len(GENRES)
    popularity_exponent: float = 1.0  # Zipf exponent of title popularity (1.0 ~ the real file)
    # Dirichlet concentration of a customer's genre taste (prior proportional to the genre
    # sizes); smaller means more focused tastes
    taste_concentration: float = 0.6
    genre_focus: float = 0.9  # probability that a pick follows the taste (else: popularity)
    next_season_prob: float = 0.2  # probability that a pick is the next season of the last one
    series_share: float = 0.35  # share of the videos that are seasons of a TV series
    # share of the videos that are one of two editions of a title (same title and
    # product_parent, different product_id)
    edition_share: float = 0.02
    activity_sigma: float = 2.0  # of the lognormal customer activity; larger: heavier tails
    max_reviews_per_customer: int = 1000  # cap on a customer's picks (<= n_products / 2)
    customer_bias_sd: float = 0.6
    quality_sd: float = 0.5
    affinity_weight: float = 1.3
    taste_like_corr: float = 0.5  # correlation of how much one watches and likes a genre
    rating_noise_sd: float = 0.6
    star_shares: tuple[float, float, float, float, float] = _STAR_SHARES  # of 1..5 stars
    duplicate_rate: float = 0.002  # share of rows that copy another row (all 15 columns)
    rereview_rate: float = 0.005  # share of rows re-reviewing a video (new review id, date)
    # share of rows with a missing headline, body and date (each drawn apart), at least
    # min_nulls of each
    null_rate: float = 5e-5
    min_nulls: int = 2
    start_date: str = "1995-01-01"  # first and last possible review date (ISO)
    end_date: str = "2015-08-31"
    yearly_growth: float = 0.5  # exponential growth rate of the review volume per year
    # scale of a customer's active period: its half-width is about
    # days_per_review * n_reviews ** 0.85 days
    days_per_review: float = 15.0
    vine_rate: float = 0.002  # share of Vine reviews
    verified_rate: float = 0.85  # average share of verified purchases


#: Built-in sizes. ``tiny`` is for tests and examples: seconds to run, yet after the default
#: long-tail filter (18/95) its catalogue (~200 videos) is twice the default K = 100, so a top-100
#: list is not the whole catalogue. ``default`` is for the workflow on a laptop, ``full`` has the
#: size of the real ``Digital_Video_Download`` file.
PRESETS: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(
        1_500, 360, 36_000, n_genres=10, popularity_exponent=0.3, max_reviews_per_customer=150
    ),
    "default": GeneratorConfig(
        100_000, 10_000, 650_000, popularity_exponent=0.9, max_reviews_per_customer=400
    ),
    "full": GeneratorConfig(2_000_000, 170_000, 3_998_345, max_reviews_per_customer=1_000),
}


# Range of every numeric knob: (low, high, low included); integers are checked apart.
_RANGES = {
    **dict.fromkeys(("genre_focus", "next_season_prob", "series_share", "edition_share",
                     "taste_like_corr", "duplicate_rate", "rereview_rate", "null_rate",
                     "vine_rate", "verified_rate"), (0.0, 1.0, True)),
    **dict.fromkeys(("taste_concentration", "activity_sigma", "days_per_review"),
                    (0.0, math.inf, False)),
    **dict.fromkeys(("popularity_exponent", "customer_bias_sd", "quality_sd", "affinity_weight",
                     "rating_noise_sd", "yearly_growth"), (0.0, math.inf, True)),
}  # fmt: skip


def _validate(cfg: GeneratorConfig) -> None:
    ints = {}
    for name in ("n_customers", "n_products", "n_reviews", "max_reviews_per_customer", "n_genres",
                 "min_nulls"):  # fmt: skip
        value = getattr(cfg, name)
        least = 0 if name == "min_nulls" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        ints[name] = int(value)
    for name, (low, high, closed) in _RANGES.items():
        value = getattr(cfg, name)
        ok = is_number(value)
        if not (ok and (low <= value if closed else low < value) and value <= high):
            interval = f"{'[' if closed else '('}{low:g}, {high:g}{']' if high < math.inf else ')'}"
            raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")
    n_customers, n_products, n_reviews = ints["n_customers"], ints["n_products"], ints["n_reviews"]
    max_reviews, n_genres = ints["max_reviews_per_customer"], ints["n_genres"]
    if n_genres > len(GENRES):
        raise ConfigError(f"n_genres must be at most {len(GENRES)}, got {n_genres}")
    if n_products < 2:
        raise ConfigError(f"n_products must be at least 2, got {n_products}")
    if max_reviews > n_products // 2:
        raise ConfigError(
            f"max_reviews_per_customer ({max_reviews}) must be at most half of n_products "
            f"({n_products}); lower it or add products"
        )
    if cfg.series_share + cfg.edition_share > 0.95:
        raise ConfigError(
            "series_share + edition_share must leave room for films (at most 0.95), got "
            f"{cfg.series_share + cfg.edition_share}"
        )
    shares = np.asarray(cfg.star_shares, dtype=np.float64)
    if shares.shape != (5,) or np.any(shares < 0) or not math.isclose(shares.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"star_shares must be 5 non-negative shares of 1..5 stars summing to 1, "
            f"got {cfg.star_shares!r}"
        )
    try:
        start = np.datetime64(cfg.start_date, "D")
        end = np.datetime64(cfg.end_date, "D")
    except ValueError as exc:
        raise ConfigError(f"start_date/end_date must be ISO dates (YYYY-MM-DD): {exc}") from exc
    if end <= start:
        raise ConfigError(f"end_date ({cfg.end_date}) must be after start_date ({cfg.start_date})")
    n_extra = _extra_counts(cfg)
    if n_reviews - sum(n_extra) < n_customers:
        raise ConfigError(
            f"n_reviews ({n_reviews}) must leave at least one review per customer "
            f"({n_customers}) after duplicates and re-reviews; raise n_reviews"
        )
    if n_reviews - sum(n_extra) > n_customers * max_reviews:
        raise ConfigError(
            f"n_reviews ({n_reviews}) exceeds n_customers * max_reviews_per_customer "
            f"({n_customers * max_reviews}); raise either"
        )


def _extra_counts(cfg: GeneratorConfig) -> tuple[int, int]:
    """Number of exact duplicate rows and of re-review rows."""
    return round(cfg.duplicate_rate * cfg.n_reviews), round(cfg.rereview_rate * cfg.n_reviews)


def _pick_sampler(cat: Catalogue, theta: np.ndarray, focus: float) -> Callable[..., np.ndarray]:
    """``draw(rng, cust)``: a video for every customer in ``cust``. With probability ``focus`` a
    genre drawn from the customer's taste ``theta``, then a video of it by popularity; else a video
    drawn by popularity alone."""
    n_genres = theta.shape[1]
    entry_genre = cat.genres.ravel()  # entries: (video, genre slot); the video is entry // 3
    entry_w = (cat.genre_w * cat.pop[:, None]).ravel()
    entries = np.flatnonzero(entry_w > 0)
    entries = entries[np.argsort(entry_genre[entries], kind="stable")]
    cum = np.cumsum(entry_w[entries])
    sizes = np.bincount(entry_genre[entries], minlength=n_genres)
    seg_end = np.cumsum(sizes)
    seg_start = seg_end - sizes
    cum0 = np.concatenate([[0.0], cum])
    seg_base = cum0[seg_start]
    seg_mass = cum0[seg_end] - seg_base
    global_cum = np.cumsum(cat.pop)
    theta_cum = np.cumsum(theta, axis=1, dtype=np.float32)

    def draw(rng: np.random.Generator, cust: np.ndarray) -> np.ndarray:
        n = len(cust)
        use_taste = rng.random(n) < focus
        u = rng.random(n, dtype=np.float32)
        v = rng.random(n)
        w = rng.random(n)
        genre = np.empty(n, dtype=np.int64)
        for lo in range(0, n, 500_000):  # in blocks: bounds the (block, n_genres) temporary
            block = slice(lo, lo + 500_000)
            genre[block] = (theta_cum[cust[block]] < u[block, None]).sum(axis=1)
        np.minimum(genre, n_genres - 1, out=genre)
        use_taste &= sizes[genre] > 0
        idx = np.searchsorted(cum, seg_base[genre] + v * seg_mass[genre], side="right")
        idx = np.clip(idx, seg_start[genre], seg_end[genre] - 1)
        by_genre = entries[np.minimum(idx, len(entries) - 1)] // 3
        by_pop = np.searchsorted(global_cum, w * global_cum[-1], side="right")
        return np.where(use_taste, by_genre, np.minimum(by_pop, len(global_cum) - 1))

    return draw


def _activity(cfg: GeneratorConfig, rng: np.random.Generator, n_picks: int) -> np.ndarray:
    """Reviews per customer: 1 + multinomial over lognormal weights, capped, summing to n_picks."""
    n = cfg.n_customers
    cap = cfg.max_reviews_per_customer
    weights = rng.lognormal(0.0, cfg.activity_sigma, size=n)
    counts = np.ones(n, dtype=np.int64)
    remaining = n_picks - n
    while remaining > 0:
        open_ = counts < cap
        p = np.where(open_, weights, 0.0)
        counts += rng.multinomial(remaining, p / p.sum())
        over = np.maximum(counts - cap, 0)
        counts -= over
        remaining = int(over.sum())
    return counts


def _resolve_repeats(rng: np.random.Generator, cust: np.ndarray, prod: np.ndarray, n_customers: int,
                     n_products: int, draw: Callable) -> None:  # fmt: skip
    """Redraw (in place) every pick of a video the customer already picked earlier."""
    active = np.arange(len(cust))
    for round_ in range(10_000):
        keys = cust[active] * n_products + prod[active]
        order = np.argsort(keys, kind="stable")
        repeat = np.concatenate([[False], keys[order][1:] == keys[order][:-1]])
        if not repeat.any():
            return
        redo = active[order[repeat]]  # by customer, then video
        # the taste for 25 rounds, then any video (a customer whose taste is exhausted)
        taste = round_ < 25
        prod[redo] = draw(rng, cust[redo]) if taste else rng.integers(n_products, size=len(redo))
        dirty = np.zeros(n_customers, dtype=bool)
        dirty[cust[redo]] = True
        active = np.flatnonzero(dirty[cust])
    raise RuntimeError("could not make every customer's picks distinct")  # pragma: no cover


def _day_weights(cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All days of the period, and the cumulative share of reviews through/before each day."""
    days = np.arange(np.datetime64(cfg.start_date, "D"), np.datetime64(cfg.end_date, "D") + 1)
    years_to_end = (np.arange(len(days)) - (len(days) - 1)) / 365.25
    months = days.astype("datetime64[M]").astype(np.int64) % 12
    w = np.exp(cfg.yearly_growth * years_to_end) * np.asarray(_MONTH_SEASONALITY)[months]
    w /= w.sum()
    through = np.cumsum(w)
    through[-1] = 1.0
    return days, through, through - w


def generate_reviews(preset: str | GeneratorConfig = "default", seed: int = 0) -> pd.DataFrame:
    """Generate a synthetic Amazon video reviews frame from a preset name in :data:`PRESETS` or
    a config; the same preset and seed (of ``numpy.random.default_rng``) give the same frame.

    The frame has the 15 :data:`~recsys.data.schema.AMAZON_COLUMNS` in order and ``n_reviews``
    rows in random order. ``customer_id``, ``product_parent``, ``star_rating``,
    ``helpful_votes`` and ``total_votes`` are int64; the others are pandas strings
    (``review_date`` as ``"YYYY-MM-DD"``); ``review_headline``, ``review_body`` and
    ``review_date`` have a few missing values. An unknown preset or an inconsistent config is a
    :class:`ConfigError`.
    """
    cfg = PRESETS.get(preset) if isinstance(preset, str) else preset
    if not isinstance(cfg, GeneratorConfig):
        raise ConfigError(
            f"preset must be one of {', '.join(map(repr, PRESETS))} or a GeneratorConfig; got {preset!r}"
        )
    _validate(cfg)
    t0 = time.perf_counter()
    rng_cat, rng_cust, rng_pick, rng_rows = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(4))
    n_dup, n_rereview = _extra_counts(cfg)
    n_picks = cfg.n_reviews - n_dup - n_rereview
    cat = make_catalogue(cfg, rng_cat)

    # Customers: activity, taste over genres, liking of genres, rating bias.
    n_c, n_genres = cfg.n_customers, cfg.n_genres
    counts = _activity(cfg, rng_cust, n_picks)
    base_w = (GENRE_WEIGHTS[:n_genres] / GENRE_WEIGHTS[:n_genres].sum()).astype(np.float32)
    theta = rng_cust.standard_gamma(cfg.taste_concentration * base_w, size=(n_c, n_genres), dtype=np.float32)
    total = theta.sum(axis=1, keepdims=True)
    theta = np.where(total > 0, theta / np.where(total > 0, total, 1), base_w)
    log_theta = np.log(theta + np.float32(0.01))
    log_theta -= log_theta.mean()
    log_theta /= max(float(log_theta.std()), 1e-6)  # all equal with a single genre
    rho = np.float32(cfg.taste_like_corr)
    like = rho * log_theta + np.sqrt(1 - rho * rho) * rng_cust.standard_normal((n_c, n_genres), dtype=np.float32)
    del log_theta
    bias = rng_cust.normal(0.0, cfg.customer_bias_sd, size=n_c)
    verified_p = rng_cust.beta(4.0 * cfg.verified_rate + 0.1, 4.0 * (1 - cfg.verified_rate) + 0.1, n_c)
    customer_ids = unique_ints(rng_cust, n_c, 10_000, 53_100_000)

    # Picks, in order for every customer.
    cust = np.repeat(np.arange(n_c), counts)
    block_start = np.cumsum(counts) - counts
    draw = _pick_sampler(cat, theta, cfg.genre_focus)
    del theta
    prod = draw(rng_pick, cust)
    chain = rng_pick.random(n_picks) < cfg.next_season_prob
    chain[block_start] = False  # a customer's first pick follows no earlier one
    for _ in range(3):  # a few passes so that chains of seasons follow each other
        prev = np.concatenate([[-1], prod[:-1]])
        nxt = np.where(chain, cat.next_season[np.maximum(prev, 0)], -1)
        prod = np.where(nxt >= 0, nxt, prod)
    _resolve_repeats(rng_pick, cust, prod, n_c, cfg.n_products, draw)
    del draw

    # Dates: an active window per customer; picks get the window's sorted dates in order.
    days, through, before = _day_weights(cfg)
    n_days = len(days)
    center = np.minimum(np.searchsorted(through, rng_rows.random(n_c), side="right"), n_days - 1)
    half = cfg.days_per_review * counts**0.85 * rng_rows.lognormal(0.0, 0.3, size=n_c)
    lo = np.clip(center - half, 0, n_days - 1).astype(np.int64)
    hi = np.clip(center + half, 0, n_days - 1).astype(np.int64)
    f_lo, f_hi = before[lo][cust], through[hi][cust]
    day = np.searchsorted(through, f_lo + rng_rows.random(n_picks) * (f_hi - f_lo), side="right")
    day = np.clip(day, lo[cust], hi[cust])
    day = day[np.lexsort((day, cust))]
    del f_lo, f_hi

    # Ratings: latent score cut at its quantiles.
    affinity = (like[cust[:, None], cat.genres[prod]] * cat.genre_w[prod]).sum(axis=1)
    noise = rng_rows.normal(0.0, cfg.rating_noise_sd, size=n_picks)
    score = bias[cust] + cat.quality[prod] + cfg.affinity_weight * affinity + noise
    cuts = np.quantile(score, np.cumsum(cfg.star_shares)[:-1])
    star = 1 + np.searchsorted(cuts, score, side="right")

    # Re-reviews: same customer and video, a date between the original and their last review.
    src = np.sort(rng_rows.permutation(n_picks)[:n_rereview])
    last_day = day[block_start + counts - 1]
    rr_cust = cust[src]
    rr_day = day[src] + np.floor(rng_rows.random(n_rereview) * (last_day[rr_cust] - day[src] + 1)).astype(np.int64)
    rr_score = score[src] + rng_rows.normal(0.0, cfg.rating_noise_sd, size=n_rereview)
    rr_keep = rng_rows.random(n_rereview) < 0.5  # the re-review keeps the original's stars
    rr_star = np.where(rr_keep, star[src], 1 + np.searchsorted(cuts, rr_score, side="right"))
    cust = np.concatenate([cust, rr_cust])
    prod = np.concatenate([prod, prod[src]])
    day = np.concatenate([day, np.minimum(rr_day, n_days - 1)])
    star = np.concatenate([star, rr_star]).astype(np.int64)
    n_src = len(cust)

    # Per-review attributes (duplicated rows copy them all).
    age = (n_days - 1 - day) / 365.25
    mu = 0.3 + 0.1 * age + 0.5 * (star <= 2)
    total_votes = np.floor(np.exp(rng_rows.normal(mu, 1.3)) - 0.6).clip(0, 20_000).astype(np.int64)
    help_p = np.array([0.0, 0.35, 0.45, 0.6, 0.75, 0.85])[star]
    helpful_votes = rng_rows.binomial(total_votes, help_p).astype(np.int64)
    vine = rng_rows.random(n_src) < cfg.vine_rate
    verified = (rng_rows.random(n_src) < verified_p[cust]) & ~vine
    review_id = review_ids(rng_rows, n_src)
    n_para = len(_PARAGRAPHS)
    para1 = (rng_rows.random(n_src) * n_para).astype(np.int64)
    para2 = (rng_rows.random(n_src) * n_para).astype(np.int64)
    two = rng_rows.random(n_src) < 0.3
    para2 = np.where(two, para2, n_para)  # n_para: the empty string
    sep = np.where(two, rng_rows.integers(1, len(_SEPARATORS), size=n_src), 0)
    head_off = np.cumsum([0] + [len(h) for h in _HEADLINES])
    head_pick = (rng_rows.random(n_src) * np.diff(head_off)[star - 1]).astype(np.int64)
    head_pick = np.where(rng_rows.random(n_src) < 0.35, 0, head_pick)  # "Five Stars" & co.
    headline = head_off[star - 1] + head_pick
    n_null = max(cfg.min_nulls, round(cfg.null_rate * n_src))
    null_src = [rng_rows.permutation(n_src)[:n_null] for _ in range(3)]  # headline, body, date

    # Final rows: every source row once plus exact duplicates, shuffled.
    dup_src = rng_rows.permutation(n_src)[:n_dup]
    rows = rng_rows.permutation(np.concatenate([np.arange(n_src), dup_src]))
    c, p = cust[rows], prod[rows]
    head_null, body_null, date_null = (np.isin(rows, null_rows) for null_rows in null_src)
    paragraphs = pa.array([*_PARAGRAPHS, ""], pa.large_string())
    body = pc.binary_join_element_wise(
        paragraphs.take(pa.array(para1[rows], mask=body_null)),
        paragraphs.take(para2[rows]),
        pa.array(_SEPARATORS, pa.large_string()).take(sep[rows]),
    )
    head_pool = pa.array([h for star_heads in _HEADLINES for h in star_heads], pa.large_string())
    date_pool = pa.array(np.datetime_as_string(days, unit="D"), pa.large_string())
    frame = pa.table({
        "marketplace": pa.repeat("US", len(rows)),
        "customer_id": customer_ids[c],
        "review_id": review_id.take(rows),
        "product_id": cat.product_ids.take(p),
        "product_parent": cat.parents[p],
        "product_title": cat.titles.take(p),
        "product_category": pa.repeat("Digital_Video_Download", len(rows)),
        "star_rating": star[rows],
        "helpful_votes": helpful_votes[rows],
        "total_votes": total_votes[rows],
        "vine": pc.if_else(vine[rows], "Y", "N"),
        "verified_purchase": pc.if_else(verified[rows], "Y", "N"),
        "review_headline": head_pool.take(pa.array(headline[rows], mask=head_null)),
        "review_body": body,
        "review_date": date_pool.take(pa.array(day[rows], mask=date_null)),
    }).to_pandas()  # fmt: skip
    logger.debug("generated %d synthetic reviews (%d customers, %d videos) in %.2fs",
                 len(frame), n_c, cfg.n_products, time.perf_counter() - t0)  # fmt: skip
    return frame


def review_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` distinct review ids: "R" + 13 (sometimes 12) uppercase alphanumerics."""
    digits = rng.integers(0, 36, size=(n, 13), dtype=np.uint8)
    long_ = rng.random(n) < 0.85
    digits[long_, 0] = rng.integers(1, 4, size=int(long_.sum()), dtype=np.uint8)
    powers = 36 ** np.arange(11, -1, -1, dtype=np.int64)
    while (clash := pd.Series(digits[:, :12].astype(np.int64) @ powers).duplicated()).any():
        digits[clash.to_numpy()] = rng.integers(0, 36, size=(int(clash.sum()), 13), dtype=np.uint8)
    digits[~long_, 12] = 36  # 12 characters after the "R"
    return alnum_strings("R", digits)
