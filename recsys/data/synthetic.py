"""The built-in dataset: seeded, synthetic Amazon-reviews-style video ratings.

The generator imitates the Amazon Customer Reviews file ``Digital_Video_Download``
(3,998,345 reviews, ~2M customers, ~160k videos, 15 tab-separated columns) closely enough
that the whole workflow (loading, exploration, long-tail filter, FM + k-NN) runs on it and
the models have something real to learn:

* **Who reviews what depends on taste.** Every customer has a sparse taste over
  :data:`GENRES`; every title has a sparse genre mix and a Zipf popularity (exponent ~1). A
  pick is, with probability ``genre_focus``, a genre drawn from the customer's taste and then a
  video of that genre drawn by popularity; otherwise a video drawn by popularity alone. With
  probability ``next_season_prob`` a pick is the next season of the previous pick. A customer
  never picks the same video twice on purpose (re-reviews are added separately).
* **The rating depends on the match.** A latent score ``customer bias + video quality +
  affinity(customer's liking of the video's genres) + noise`` is cut at its quantiles into
  1-5 stars with the J-shaped marginal of Amazon video (roughly 12/5/8/15/60 %).
* **Activity is heavy-tailed.** Most customers write one review, a few write hundreds.
* **Time.** Reviews span 1995 to August 2015, grow exponentially (most fall in 2012-2015)
  and peak in December/January. A customer's picks are dated in the order they were made,
  so a customer's latest review is their latest pick.
* **Imperfections of the real file.** Exact duplicate rows, customers re-reviewing a video,
  a few missing headlines, bodies and dates; :func:`write_reviews_tsv` adds malformed lines
  and review bodies with non-UTF-8 bytes.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same preset and seed give the
same frame and the same file bytes.

Examples
--------
>>> from recsys.data.synthetic import generate_reviews, write_reviews_tsv
>>> df = generate_reviews("tiny", seed=0)
>>> info = write_reviews_tsv(df, "reviews.tsv.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .._io import atomic_path
from ..errors import ConfigError, DataError
from .schema import AMAZON_COLUMNS

__all__ = [
    "GENRES",
    "GeneratorConfig",
    "GENERATOR_VERSION",
    "MALFORMED_REASONS",
    "PRESETS",
    "WriteInfo",
    "generate_reviews",
    "write_preset",
    "write_reviews_tsv",
]

logger = logging.getLogger("recsys")

#: Genre names, most common first; a config uses the first ``n_genres`` of them.
GENRES: tuple[str, ...] = (
    "Drama",
    "Comedy",
    "Action & Adventure",
    "Kids & Family",
    "Documentary",
    "Thriller",
    "Romance",
    "Science Fiction",
    "Horror",
    "Crime",
    "Mystery",
    "Fitness",
    "Animation",
    "Fantasy",
    "Reality TV",
    "Anime",
    "Faith & Spirituality",
    "Music & Concerts",
    "Western",
    "Sports",
    "Military & War",
    "International",
    "Special Interest",
    "Independent",
)
_GENRE_WEIGHTS = np.array(
    [14, 13, 9, 7, 6, 7, 5, 5, 5, 4, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 2], dtype=np.float64
)
# Title style of each genre (see _TITLE_TEMPLATES).
_GENRE_STYLE = (
    "story", "story", "story", "kids", "doc", "story", "story", "story", "story", "story",
    "story", "fitness", "kids", "story", "reality", "anime", "faith", "music", "story",
    "sports", "story", "story", "doc", "story",
)  # fmt: skip

#: Reasons reported in :attr:`WriteInfo.malformed_line_numbers`.
#: Bumped whenever the generator's output changes for a given preset and seed (cache key).
GENERATOR_VERSION = 1

MALFORMED_REASONS: tuple[str, ...] = (
    "too many fields",
    "too few fields",
    "non-numeric star_rating",
    "star_rating outside 1-5",
)

_STAR_SHARES = (0.12, 0.05, 0.08, 0.15, 0.60)
_MONTH_SEASONALITY = (1.30, 1.05, 1.00, 0.95, 0.92, 0.90, 0.95, 0.95, 0.90, 0.95, 1.05, 1.25)
_ALNUM = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the synthetic review generator.

    Parameters
    ----------
    n_customers, n_products, n_reviews : int
        Size of the output: distinct customers, distinct videos (``product_id``) and rows
        (including duplicate rows and re-reviews). Every customer writes at least one review
        and every video exists in the catalogue, though unpopular videos may get no review.
    n_genres : int
        Number of genres, at most ``len(GENRES)``.
    popularity_exponent : float
        Zipf exponent of title popularity (1.0 ~ the real file).
    taste_concentration : float
        Dirichlet concentration of a customer's genre taste; smaller means more focused tastes
        (the prior is proportional to the genre sizes).
    genre_focus : float
        Probability that a pick follows the customer's taste (else: popularity alone).
    next_season_prob : float
        Probability that a pick is the next season of the customer's previous pick, when
        there is one.
    series_share : float
        Share of the videos that are seasons of a TV series.
    edition_share : float
        Share of the videos that are one of two editions of a title (same title and
        ``product_parent``, different ``product_id``).
    activity_sigma : float
        Sigma of the lognormal customer activity; larger means heavier tails.
    max_reviews_per_customer : int
        Cap on a customer's picks (at most half of ``n_products``).
    customer_bias_sd, quality_sd, affinity_weight, rating_noise_sd : float
        Scales of the latent rating score ``bias + quality + affinity_weight * affinity +
        noise``; the affinity has unit scale.
    taste_like_corr : float
        Correlation between how much a customer watches a genre and how much they like it.
    star_shares : tuple of 5 floats
        Target shares of 1..5 stars.
    duplicate_rate : float
        Share of rows that are exact copies of another row (all 15 columns).
    rereview_rate : float
        Share of rows that are a customer reviewing a video again (new review id and date).
    null_rate : float
        Share of rows with a missing headline, body and date (each drawn separately; at least
        ``min_nulls`` each).
    min_nulls : int
        Minimum number of missing values in each of headline, body and date.
    start_date, end_date : str
        First and last possible review date (ISO format).
    yearly_growth : float
        Exponential growth rate of the review volume per year.
    days_per_review : float
        Scale of a customer's active period: its half-width is about
        ``days_per_review * n_reviews ** 0.85`` days.
    vine_rate : float
        Share of Vine reviews.
    verified_rate : float
        Average share of verified purchases.
    """

    n_customers: int
    n_products: int
    n_reviews: int
    n_genres: int = 20
    popularity_exponent: float = 1.0
    taste_concentration: float = 0.6
    genre_focus: float = 0.9
    next_season_prob: float = 0.2
    series_share: float = 0.35
    edition_share: float = 0.02
    activity_sigma: float = 2.0
    max_reviews_per_customer: int = 1000
    customer_bias_sd: float = 0.6
    quality_sd: float = 0.5
    affinity_weight: float = 1.3
    taste_like_corr: float = 0.5
    rating_noise_sd: float = 0.6
    star_shares: tuple[float, float, float, float, float] = _STAR_SHARES
    duplicate_rate: float = 0.002
    rereview_rate: float = 0.005
    null_rate: float = 5e-5
    min_nulls: int = 2
    start_date: str = "1995-01-01"
    end_date: str = "2015-08-31"
    yearly_growth: float = 0.5
    days_per_review: float = 15.0
    vine_rate: float = 0.002
    verified_rate: float = 0.85


#: Built-in sizes. ``tiny`` is for unit tests, ``default`` for the workflow on a laptop,
#: ``full`` has the size of the real ``Digital_Video_Download`` file.
PRESETS: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(
        n_customers=1_000,
        n_products=120,
        n_reviews=12_000,
        n_genres=10,
        max_reviews_per_customer=60,
    ),
    "default": GeneratorConfig(
        n_customers=100_000,
        n_products=10_000,
        n_reviews=650_000,
        popularity_exponent=0.9,
        max_reviews_per_customer=400,
    ),
    "full": GeneratorConfig(
        n_customers=2_000_000,
        n_products=170_000,
        n_reviews=3_998_345,
        max_reviews_per_customer=1_000,
    ),
}


@dataclass(frozen=True)
class WriteInfo:
    """What :func:`write_reviews_tsv` wrote.

    Attributes
    ----------
    path : Path
        The file written.
    n_lines : int
        Data lines, excluding the header (valid rows plus malformed lines).
    malformed_line_numbers : dict[int, str]
        1-based file line number (the header is line 1) -> reason, one of
        :data:`MALFORMED_REASONS`.
    non_utf8_line_numbers : list[int]
        1-based file line numbers of valid rows whose ``review_body`` has non-UTF-8 bytes
        appended.
    valid_rows : int
        Lines that are rows of the frame written (``n_lines - len(malformed_line_numbers)``).
    """

    path: Path
    n_lines: int
    malformed_line_numbers: dict[int, str]
    non_utf8_line_numbers: list[int]
    valid_rows: int


# --------------------------------------------------------------------------------------------
# Validation


def _resolve_config(preset: str | GeneratorConfig) -> GeneratorConfig:
    if isinstance(preset, GeneratorConfig):
        cfg = preset
    elif isinstance(preset, str) and preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ConfigError(
            f"preset must be one of {', '.join(map(repr, PRESETS))} or a GeneratorConfig; "
            f"got {preset!r}"
        )
    _validate(cfg)
    return cfg


def _validate(cfg: GeneratorConfig) -> None:
    def positive_int(name: str) -> int:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    def unit_interval(name: str) -> None:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")

    def nonneg(name: str, *, strict: bool = False) -> None:
        value = getattr(cfg, name)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        ok = ok and (value > 0 if strict else value >= 0)
        if not ok:
            kind = "a positive" if strict else "a non-negative"
            raise ConfigError(f"{name} must be {kind} number, got {value!r}")

    n_customers = positive_int("n_customers")
    n_products = positive_int("n_products")
    n_reviews = positive_int("n_reviews")
    max_reviews = positive_int("max_reviews_per_customer")
    n_genres = positive_int("n_genres")
    if n_genres > len(GENRES):
        raise ConfigError(f"n_genres must be at most {len(GENRES)}, got {n_genres}")
    if n_products < 2:
        raise ConfigError(f"n_products must be at least 2, got {n_products}")
    if max_reviews > n_products // 2:
        raise ConfigError(
            f"max_reviews_per_customer ({max_reviews}) must be at most half of n_products "
            f"({n_products}); lower it or add products"
        )
    for name in ("genre_focus", "next_season_prob", "series_share", "edition_share",
                 "taste_like_corr", "duplicate_rate", "rereview_rate", "null_rate",
                 "vine_rate", "verified_rate"):  # fmt: skip
        unit_interval(name)
    if cfg.series_share + cfg.edition_share > 0.95:
        raise ConfigError(
            "series_share + edition_share must leave room for films (at most 0.95), got "
            f"{cfg.series_share + cfg.edition_share}"
        )
    for name in ("taste_concentration", "activity_sigma", "days_per_review"):
        nonneg(name, strict=True)
    for name in ("popularity_exponent", "customer_bias_sd", "quality_sd", "affinity_weight",
                 "rating_noise_sd", "yearly_growth"):  # fmt: skip
        nonneg(name)
    if isinstance(cfg.min_nulls, bool) or not isinstance(cfg.min_nulls, int) or cfg.min_nulls < 0:
        raise ConfigError(f"min_nulls must be a non-negative integer, got {cfg.min_nulls!r}")
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


# --------------------------------------------------------------------------------------------
# Vocabulary (fixed; drawn once from a fixed internal seed, independent of the user's seed)

_W = {
    "adj": "Silent Broken Hidden Lost Golden Dark Wild Crimson Frozen Distant Secret Endless "
    "Burning Quiet Fallen Bright Hollow Savage Gentle Restless Midnight Electric Iron Velvet "
    "Forgotten Perfect Little Long Final Eternal Shattered Stolen Second Blue Black White Red "
    "Northern Southern Sweet Bitter Lucky Lonely Happy Brave Strange Deadly Innocent Wicked "
    "Sacred Hungry Rising Falling Cold Hot Silver Scarlet Emerald Violent Tender Fragile "
    "Reckless Haunted Painted Sunken Hollywood American English Royal Crooked Empty Lovely "
    "Curious Fearless Faithful Twisted Dangerous Beautiful Ordinary Magnificent Invisible "
    "Borrowed Bleeding Whispering Dancing Sleeping Running Shining Wandering Roaring Raging "
    "Howling Glass Stone Paper Steel Neon Desert Ocean Mountain Winter Summer Autumn Spring".split(),
    "noun": "River House Road Garden Promise Storm Kingdom Secret Summer Winter Harvest Shadow "
    "Empire Station Island Harbor Bridge Letter Game Sky Heart Witness Horizon Journey Frontier "
    "Valley City Mirror Code Signal Hunt Truth Legacy Affair Night Edge Circle Song Fire Line "
    "Child Stranger Killer Doctor Soldier Bride Thief Queen King Angel Ghost Detective Sister "
    "Brother Hotel Farm Prison Hospital Ranch Lake Forest Desert Ocean Tower Castle Chapel Diner "
    "Canyon Border Crossing Voyage Mission Sentence Verdict Ransom Treasure Crown Sword Arrow "
    "Compass Lantern Candle Window Door Key Clock Engine Machine Planet Moon Star Comet Galaxy "
    "Wolf Hawk Raven Tiger Lion Serpent Horse Rose Orchid Lily Feather Diamond Pearl Ruby "
    "Dream Memory Silence Whisper Echo Prophecy Curse Bargain Wager Dance Waltz Ballad Symphony "
    "Carnival Circus Wedding Funeral Reunion Holiday Weekend Vacation Getaway Heist Scandal "
    "Conspiracy Rebellion Revolution Invasion Outbreak Exodus Pilgrim Orphan Widow Heir "
    "Gambler Hustler Preacher Sheriff Outlaw Ranger Pilot Sailor Spy Assassin Hunter".split(),
    "place": "Paris Texas Brooklyn Alaska Montana Tokyo Cairo Havana Dublin Mars Avalon "
    "Shanghai Memphis Berlin Yorkshire Cornwall Nevada Nairobi Boston Chicago Vegas London "
    "Manhattan Sicily Rome Moscow Savannah Oregon Malibu Kentucky Vienna Prague Lisbon Madrid "
    "Marseille Venice Naples Athens Istanbul Mumbai Bangkok Seoul Sydney Tasmania Patagonia "
    "Montreal Vancouver Yukon Dakota Wyoming Arizona Carolina Georgia Louisiana Baltimore "
    "Detroit Harlem Brighton Glasgow Belfast Oxford Kyoto Hong Kong Casablanca Marrakesh".split(),
    "name": "Jack Emma Max Lucy Oliver Grace Sam Nora Henry Ruby Leo Alice Charlie Molly Finn "
    "Rosie Eddie Clara Billy Hazel Frank Maggie Tom Kate Harry Annie Walter Eve Joe Daisy Luke "
    "Iris Ben Stella Gus Violet Jake Mabel Hank Ivy Lou Pearl Ray June Ned Opal Otis Rita Vince "
    "Wendy Abe Bea Cal Dot Ezra Faye Gil Hope Ike Jess".split(),
    "surname": "Miller Carter Blake Hayes Reed Walsh Brooks Foster Crane Lowell Hart Quinn "
    "Sterling Winslow Archer Donovan Graves Mercer Sinclair Whitaker Crawley Bishop Hale "
    "Marlowe Prescott Thornton Ashby Beckett Calloway Delaney Ellison Fairfax Garrison Holloway "
    "Irving Jameson Kingsley Lockhart Montgomery Newbury Oakley Pemberton Radcliffe Stanton "
    "Townsend Underwood Vance Wainwright Yates Zimmerman".split(),
    "animal": "Bear Bunny Dragon Puppy Kitten Owl Penguin Dinosaur Fox Turtle Elephant Monkey "
    "Whale Robot Pony Tiger Duck Frog Llama Octopus".split(),
    "topic": ["the Deep Ocean", "the Amazon", "Ancient Egypt", "the Universe", "Jazz",
              "the Civil War", "Volcanoes", "Honey Bees", "Wolves", "the Moon", "Coffee",
              "the Brain", "Chess", "the Titanic", "Rome", "the Arctic", "Whales", "Genghis Khan",
              "the Silk Road", "Flight", "Food", "the Cold War", "Dinosaurs", "the Rainforest",
              "the Vikings", "the Pyramids", "Antarctica", "the Sahara", "Hurricanes", "Sharks",
              "the Samurai", "the Aztecs", "the Mafia", "Wall Street", "the Space Race", "Mars",
              "the Great Depression", "Hollywood", "the Blues", "Baseball", "the Oceans",
              "the Human Body", "Bears", "the Gold Rush", "the Wild West", "Pompeii",
              "the Renaissance", "Elephants", "Big Cats", "Bees", "the Himalayas", "Iceland"],
    "workout": ["Yoga", "Pilates", "Tai Chi", "Cardio Kickboxing", "Core Fitness", "Zumba",
                "Barre", "Kettlebell", "HIIT", "Stretching", "Power Walking", "Belly Dance",
                "Bootcamp", "Abs", "Step Aerobics"],
    "bible": "Moses David Ruth Paul Esther Noah Abraham Mary Joseph Daniel Jonah Peter".split(),
    "jp": "Sora Kaze Hikari Yume Tsuki Kage Hoshi Ryu Sakura Kumo Akira Tenshi Mirai Yoru".split(),
    "sport": "Baseball Football Basketball Soccer Boxing Golf Hockey Surfing Tennis".split(),
    "reality": "Kitchen Wives Rescue Pawn Island Ranch Garage Cakes Flip Makeover".split(),
}
_TITLE_TEMPLATES: dict[str, list[str]] = {
    "story": ["The {adj} {noun}", "{adj} {noun}", "The {noun} of {place}", "A {noun} in {place}",
              "{name}'s {noun}", "The Last {noun}", "Return to {place}", "{noun} & {noun2}",
              "The {noun} Within", "{adj} {noun}: The {noun2}", "Beyond the {noun}",
              "The {surname} {noun}", "Escape from {place}", "{noun} Rising", "{adj} in {place}",
              "The {noun}'s {noun2}", "{name} and the {adj} {noun}", "{place} {noun}",
              "The {adj} {noun} of {place}", "{name} {surname}'s {noun}", "The {noun} from {place}",
              "When the {noun} Falls", "{surname}'s {adj} {noun}", "Night of the {adj} {noun}",
              "The {place} {noun}", "{adj} {noun}, {adj2} {noun2}", "A {adj} {noun} for {name}",
              "The {noun} and the {noun2}", "{name} {surname}", "Saving {name} {surname}"],
    "kids": ["{name} the {animal}", "The {adj} {animal}", "{animal} Friends",
             "{animal} Pals Adventures", "Little {animal}'s Big {noun}",
             "{name} and the {adj} {animal}", "The {animal} Who Saved {place}"],
    "doc": ["The Story of {topic}", "Inside {topic}", "{topic}: The Untold Story",
            "Secrets of {topic}", "Life in {place}", "Wonders of {topic}",
            "The {adj} Planet", "{topic} Revealed"],
    "fitness": ["{workout} for Beginners", "{n}-Minute {workout}", "{workout} with {name}",
                "Total Body {workout}", "{workout} Burn", "{workout} Basics",
                "{workout} for Weight Loss", "Advanced {workout}"],
    "faith": ["The {noun} of Faith", "{bible}: The {adj} {noun}", "Walking with {bible}",
              "The Gospel of {bible}", "{adj} Grace", "The Book of {bible}"],
    "anime": ["{jp} {noun}", "{jp}: {adj} {noun}", "{jp} no {jp2}", "{adj} {jp}"],
    "music": ["The {adj} {noun}s: Live in {place}", "{name} {surname} in Concert",
              "The {adj} Tour", "{adj} Nights in {place}", "Unplugged in {place}"],
    "reality": ["{place} {reality}", "The Real {reality} of {place}", "{adj} {reality}",
                "Extreme {reality}", "{surname} Family {reality}"],
    "sports": ["{place} {sport}: The {adj} Season", "Legends of {sport}",
               "The {adj} Game", "Road to the {sport} Championship", "{sport} Dreams"],
}
_SERIES_TEMPLATES = ["{place} {noun}", "The {surname}s", "{adj} {noun}", "{noun} Street",
                     "The {adj} Ones", "{surname} & {surname2}", "{surname} Abbey",
                     "{surname} Manor", "{place} Vice", "{noun} Patrol", "{place} General",
                     "Inspector {surname}", "{adj} {place}", "{noun} Hunters"]
_SEASON_FORMATS = ["{s} Season {k}", "{s} Season {k}", "{s} Season {k}", "{s}, Season {k}",
                   "{s} - Season {k}", "{s}: Season {k}"]

_SENT_FILL = {
    "thing": "show movie series film documentary season story program workout".split(),
    "aspect": ["story", "acting", "ending", "cast", "soundtrack", "writing", "cinematography",
               "pacing", "picture quality", "dialogue", "characters", "music", "plot",
               "instructor"],
    "pos": ["great", "wonderful", "amazing", "excellent", "fantastic", "brilliant", "superb",
            "beautiful", "fun", "moving", "hilarious", "gripping", "well done", "top notch",
            "charming", "spot on"],
    "mix": ["ok", "uneven", "a bit slow", "so-so", "average", "decent", "fine", "predictable"],
    "neg": ["awful", "boring", "terrible", "weak", "dull", "confusing", "predictable",
            "painful", "silly", "bad", "flat", "poor", "cheesy", "grainy"],
    "family": "wife husband kids son daughter family mom dad grandson granddaughter friends".split(),
}
_SENTENCES = {
    "pos": ["Loved it!", "Great {thing}.", "One of the best {thing}s I have seen in years.",
            "The {aspect} was {pos}.", "My {family} and I watched the whole thing in one weekend.",
            "Can't wait for the next season!", "Highly recommend & will watch again.",
            "The acting is {pos} and the {aspect} is {pos2}.",
            "It's {pos}, {pos2} and very well made.", "I've watched it three times already.",
            "Worth every penny.", "Streamed perfectly in HD.", "Kept me on the edge of my seat.",
            "Five stars, no question.", 'As my {family} says, "best {thing} ever".',
            "Just what I was looking for.", "Great for the whole family.",
            "Such a {pos} {thing}!", "The ending was {pos}.", "I didn't want it to end.",
            "Better than I expected.", "Loved every minute & every character.",
            "The {aspect} alone is worth it.", "My {family} loved it too."],
    "mix": ["It was ok.", "Not bad, not great.", "The {aspect} was {mix} but the {aspect2} was {neg}.",
            "Some good moments but a bit {mix}.", "Started strong, then it dragged.",
            "Good enough for a rainy night.", "I expected more from the {aspect}.",
            "Worth a watch if it's free with Prime.", "3 stars & that's being generous.",
            "The {aspect} was {pos} but the {aspect2} was {mix}.", "It's {mix}.",
            'My {family} called it "{mix}" and I agree.', "Watchable, but I won't watch it again."],
    "neg": ["Terrible.", "What a waste of time.", "The {aspect} was {neg}.", "I couldn't finish it.",
            "Boring & predictable.", "Don't waste your money.",
            "The stream kept buffering and the picture was {neg}.", "Not what I expected at all.",
            "Turned it off after 20 minutes.", "The {aspect} made no sense.",
            "I want my money back.", "Worst {thing} I've seen this year.",
            'It\'s a "{thing}" in name only.', "The {aspect} was {neg} and the {aspect2} was {neg2}.",
            "My {family} fell asleep.", "Avoid."],
}
_HEADLINES = {
    1: ["One Star", "Terrible", "Waste of money", "Awful", "Don't bother", "Worst movie ever",
        "Boring", "Not worth it", '"Comedy"? Really?', "Stay away"],
    2: ["Two Stars", "Disappointing", "Not great", "Meh", "Could have been better",
        "Not my cup of tea", "Slow & dull"],
    3: ["Three Stars", "OK", "It's ok", "Not bad", "Average", "So-so", "Good, not great"],
    4: ["Four Stars", "Very good", "Good show", "Enjoyed it", "Pretty good", "Worth watching",
        "Fun & entertaining", "Good movie"],
    5: ["Five Stars", "Great show!", "Loved it", "Excellent", "Must watch", "Awesome",
        "Great series", "Wonderful movie", "Highly recommend", "Best show ever!", "Love it!",
        "Amazing", "Great movie"],
}
_BODY_SEPARATORS = ["", " ", "<br /><br />", "<br />", " "]
_NON_UTF8_SNIPPETS = (b" \xff\xfe", b" The caf\xe9 scene was lovely.", b" Na\xefve but fun.",
                      b" \x96 great pacing.", b" Se\xf1or Ramos was the best part.")  # fmt: skip


_SLOT = re.compile(r"\{([a-z]+?)(2?)\}")


def _fill(template: str, uniforms: Iterator[float], words: dict[str, list[str]]) -> str:
    """Fill ``{key}`` / ``{key2}`` slots of ``template`` with words drawn from ``words``.

    ``{key2}`` differs from ``{key}`` when both appear. ``uniforms`` yields floats in [0, 1).
    """
    chosen: dict[str, int] = {}

    def pick(match: re.Match[str]) -> str:
        key, second = match.group(1), match.group(2)
        values = words[key]
        if second and key in chosen and len(values) > 1:
            i = (chosen[key] + 1 + int(next(uniforms) * (len(values) - 1))) % len(values)
        else:
            i = int(next(uniforms) * len(values))
            chosen.setdefault(key, i)
        return values[i]

    return _SLOT.sub(pick, template)


@functools.lru_cache(maxsize=1)
def _text_pools() -> tuple[pa.Array, np.ndarray, pa.Array, np.ndarray]:
    """Paragraph pool (grouped neg, mix, pos) with group offsets; headline pool by star."""
    rng = np.random.default_rng(20150831)
    uniforms = iter(rng.random(200_000).tolist())
    paragraphs: list[str] = []
    offsets = [0]
    for key, size in (("neg", 1500), ("mix", 800), ("pos", 2500)):
        seen: set[str] = set()
        sentences = _SENTENCES[key]
        for _ in range(size * 3):
            n_sent = 1 + int(next(uniforms) < 0.45)
            text = " ".join(
                _fill(sentences[int(next(uniforms) * len(sentences))], uniforms, _SENT_FILL)
                for _ in range(n_sent)
            )
            seen.add(text)
            if len(seen) == size:
                break
        paragraphs.extend(sorted(seen))
        offsets.append(len(paragraphs))
    paragraphs.append("")  # the empty second paragraph
    headlines: list[str] = []
    head_offsets = [0]
    for star in range(1, 6):
        headlines.extend(_HEADLINES[star])
        head_offsets.append(len(headlines))
    for text in paragraphs + headlines + _BODY_SEPARATORS:
        if any(c in text for c in "\t\n\r"):  # pragma: no cover - vocabulary invariant
            raise AssertionError(f"vocabulary entry contains a tab or newline: {text!r}")
    return (
        pa.array(paragraphs, pa.large_string()),
        np.asarray(offsets, dtype=np.int64),
        pa.array(headlines, pa.large_string()),
        np.asarray(head_offsets, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# Catalogue


@dataclass
class _Catalogue:
    genres: np.ndarray  # (n_products, 3) genre index per slot
    genre_w: np.ndarray  # (n_products, 3) weights, rows sum to 1, zero for unused slots
    pop: np.ndarray  # (n_products,) popularity, sums to 1
    quality: np.ndarray  # (n_products,)
    next_season: np.ndarray  # (n_products,) next season's index or -1
    titles: pa.Array
    product_ids: pa.Array
    parents: np.ndarray  # (n_products,) int64


def _uniform_stream(rng: np.random.Generator, block: int = 65_536) -> Iterator[float]:
    """An endless stream of floats in [0, 1) drawn from ``rng`` in blocks."""
    while True:
        yield from rng.random(block).tolist()


def _unit_titles(rng: np.random.Generator, styles: list[str], is_series: np.ndarray) -> list[str]:
    """One distinct base title per unit (film, series or two-edition title).

    A title already taken is redrawn a few times (from the generic templates once the genre's
    own are exhausted); then it gets a year ("Title (1987)") and, if still taken, a sequel
    number ("Title 2").
    """
    words = {**_W, "n": [str(v) for v in (10, 15, 20, 30, 45, 60)]}
    titles: list[str] = []
    seen: set[str] = set()
    uniforms = _uniform_stream(rng)
    for i, style in enumerate(styles):
        if is_series[i] and style not in ("fitness", "kids", "anime", "reality"):
            templates = _SERIES_TEMPLATES
        else:
            templates = _TITLE_TEMPLATES[style]
        for attempt in range(6):
            if attempt == 2:  # the genre's own templates are exhausted: any drama-like title
                templates = _SERIES_TEMPLATES if is_series[i] else _TITLE_TEMPLATES["story"]
            title = _fill(templates[int(next(uniforms) * len(templates))], uniforms, words)
            title = title[0].upper() + title[1:]
            if title not in seen:
                break
        else:
            title = f"{title} ({1950 + int(next(uniforms) * 66)})"
            base, sequel = title, 2
            while title in seen:
                title = f"{base[: base.rindex(' (')]} {sequel}"
                sequel += 1
        seen.add(title)
        titles.append(title)
    return titles


def _make_catalogue(cfg: GeneratorConfig, rng: np.random.Generator) -> _Catalogue:
    n = cfg.n_products
    n_genres = cfg.n_genres
    # Units: series (several seasons), two-edition titles, single films.
    target_series = round(cfg.series_share * n)
    lengths = np.minimum(1 + rng.geometric(0.3, size=target_series // 2 + 1), 15)
    series_len = lengths[np.cumsum(lengths) <= target_series]
    n_edition_units = min(round(cfg.edition_share * n / 2), (n - int(series_len.sum())) // 2)
    n_films = n - int(series_len.sum()) - 2 * n_edition_units
    unit_size = np.concatenate(
        [series_len, np.full(n_edition_units, 2), np.ones(n_films, dtype=np.int64)]
    ).astype(np.int64)
    kind = np.repeat(np.array([1, 2, 0]), [len(series_len), n_edition_units, n_films])
    order = rng.permutation(len(unit_size))
    unit_size, kind = unit_size[order], kind[order]
    n_units = len(unit_size)
    unit_start = np.cumsum(unit_size) - unit_size
    prod_unit = np.repeat(np.arange(n_units), unit_size)
    slot = np.arange(n) - unit_start[prod_unit]

    # Genres: 1-3 per unit, drawn without replacement proportionally to the genre sizes.
    base_w = _GENRE_WEIGHTS[:n_genres] / _GENRE_WEIGHTS[:n_genres].sum()
    keys = np.log(base_w) + rng.gumbel(size=(n_units, n_genres))
    k = min(3, n_genres)
    unit_genres = np.argsort(-keys, axis=1)[:, :k]
    n_unit_genres = np.minimum(rng.choice(np.array([1, 2, 3]), size=n_units, p=[0.5, 0.35, 0.15]), k)
    gw = rng.gamma(2.0, size=(n_units, k)) * (np.arange(k) < n_unit_genres[:, None])
    gw = -np.sort(-gw, axis=1)  # the first genre is the main one
    gw /= gw.sum(axis=1, keepdims=True)
    if k < 3:
        unit_genres = np.pad(unit_genres, ((0, 0), (0, 3 - k)))
        gw = np.pad(gw, ((0, 0), (0, 3 - k)))

    # Popularity: Zipf over units, nudged by quality; seasons fade, the second edition is rarer.
    unit_quality = rng.normal(0.0, cfg.quality_sd, size=n_units)
    ranks = rng.permutation(n_units) + 1.0
    unit_pop = ranks ** (-cfg.popularity_exponent) * np.exp(0.3 * unit_quality)
    prod_kind = kind[prod_unit]
    factor = np.where(prod_kind == 1, 0.75**slot, 1.0)
    factor = np.where(prod_kind == 2, np.where(slot == 0, 0.75, 0.25), factor)
    pop = unit_pop[prod_unit] * factor
    pop /= pop.sum()
    quality = unit_quality[prod_unit] + rng.normal(0.0, 0.2 * cfg.quality_sd, size=n)

    last_slot = slot == unit_size[prod_unit] - 1
    next_season = np.where((prod_kind == 1) & ~last_slot, np.arange(n) + 1, -1)

    # Titles.
    styles = [_GENRE_STYLE[g] for g in unit_genres[:, 0]]
    base_titles = _unit_titles(rng, styles, kind == 1)
    fmt_pick = rng.integers(len(_SEASON_FORMATS), size=n_units)
    hd = rng.random(n) < 0.04
    titles = []
    for p in range(n):
        u = int(prod_unit[p])
        title = base_titles[u]
        if kind[u] == 1:
            if styles[u] == "fitness":
                title = f"{title} Vol. {slot[p] + 1}"
            else:
                title = _SEASON_FORMATS[fmt_pick[u]].format(s=title, k=slot[p] + 1)
        if hd[p] and kind[u] != 2:
            title += " [HD]"
        titles.append(title)

    # Identifiers: product ids "B00" + 7 base-36 characters through a random bijection;
    # product_parent: one 9-digit number per unit for editions, per product otherwise.
    space = 36**7
    a = int(rng.integers(1, space // 6)) * 6 + 1  # coprime with 36
    x = (a * np.arange(n, dtype=np.int64) + int(rng.integers(space))) % space
    digits = (x[:, None] // (36 ** np.arange(6, -1, -1, dtype=np.int64))) % 36
    raw = np.empty((n, 10), dtype=np.uint8)
    raw[:, :3] = np.frombuffer(b"B00", dtype=np.uint8)
    raw[:, 3:] = _ALNUM[digits]
    product_ids = pa.array(raw.view("S10").ravel()).cast(pa.large_string())
    parent_key = np.where(prod_kind == 2, n + prod_unit, np.arange(n))
    parent_values = _unique_ints(rng, 2 * n, 100_000_000, 1_000_000_000)
    parents = parent_values[parent_key]

    return _Catalogue(
        genres=unit_genres[prod_unit].astype(np.int64),
        genre_w=gw[prod_unit],
        pop=pop,
        quality=quality,
        next_season=next_season.astype(np.int64),
        titles=pa.array(titles, pa.large_string()),
        product_ids=product_ids,
        parents=parents.astype(np.int64),
    )


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` distinct integers in ``[low, high)`` in random order (``n`` << ``high - low``)."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        draw = np.concatenate([out, rng.integers(low, high, size=int((n - len(out)) * 1.05) + 16)])
        draw.sort()
        out = draw[np.concatenate([[True], draw[1:] != draw[:-1]])]
    return rng.permutation(out)[:n]


# --------------------------------------------------------------------------------------------
# Customers and picks


class _PickSampler:
    """Draws videos for customers: a genre from the taste, then a video of it by popularity."""

    def __init__(self, cat: _Catalogue, theta: np.ndarray, focus: float) -> None:
        n_products = len(cat.pop)
        n_genres = theta.shape[1]
        entry_genre = cat.genres.ravel()
        entry_w = (cat.genre_w * cat.pop[:, None]).ravel()
        entry_prod = np.repeat(np.arange(n_products), 3)
        keep = entry_w > 0
        entry_genre, entry_w, entry_prod = entry_genre[keep], entry_w[keep], entry_prod[keep]
        order = np.argsort(entry_genre, kind="stable")
        self.entry_prod = entry_prod[order]
        self.cum = np.cumsum(entry_w[order])
        sizes = np.bincount(entry_genre, minlength=n_genres)
        self.seg_end = np.cumsum(sizes)
        self.seg_start = self.seg_end - sizes
        cum0 = np.concatenate([[0.0], self.cum])
        self.seg_base = cum0[self.seg_start]
        self.seg_mass = cum0[self.seg_end] - self.seg_base
        self.global_cum = np.cumsum(cat.pop)
        self.theta_cum = np.cumsum(theta, axis=1, dtype=np.float32)
        self.has_genre = sizes > 0
        self.focus = focus
        self.n_genres = n_genres

    def draw(self, rng: np.random.Generator, cust: np.ndarray) -> np.ndarray:
        n = len(cust)
        use_taste = rng.random(n) < self.focus
        u = rng.random(n, dtype=np.float32)
        v = rng.random(n)
        w = rng.random(n)
        genre = np.empty(n, dtype=np.int64)
        step = 500_000
        for lo in range(0, n, step):
            sl = slice(lo, lo + step)
            genre[sl] = (self.theta_cum[cust[sl]] < u[sl, None]).sum(axis=1)
        np.minimum(genre, self.n_genres - 1, out=genre)
        use_taste &= self.has_genre[genre]
        idx = np.searchsorted(self.cum, self.seg_base[genre] + v * self.seg_mass[genre], side="right")
        idx = np.clip(idx, self.seg_start[genre], self.seg_end[genre] - 1)
        by_genre = self.entry_prod[np.minimum(idx, len(self.entry_prod) - 1)]
        by_pop = np.searchsorted(self.global_cum, w * self.global_cum[-1], side="right")
        by_pop = np.minimum(by_pop, len(self.global_cum) - 1)
        return np.where(use_taste, by_genre, by_pop)


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


def _resolve_repeats(
    rng: np.random.Generator,
    cust: np.ndarray,
    prod: np.ndarray,
    n_customers: int,
    n_products: int,
    sampler: _PickSampler,
    taste_rounds: int = 25,
) -> None:
    """Redraw (in place) every pick of a video the customer already picked earlier."""
    key = cust * n_products + prod
    active = np.arange(len(cust))
    for round_ in range(10_000):
        keys = key[active]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        repeat = np.zeros(len(keys), dtype=bool)
        repeat[1:] = sorted_keys[1:] == sorted_keys[:-1]
        if not repeat.any():
            return
        redo = active[order[repeat]]
        if round_ < taste_rounds:
            new = sampler.draw(rng, cust[redo])
        else:
            new = rng.integers(n_products, size=len(redo))
        prod[redo] = new
        key[redo] = cust[redo] * n_products + new
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


# --------------------------------------------------------------------------------------------
# The frame


def generate_reviews(preset: str | GeneratorConfig = "default", seed: int = 0) -> pd.DataFrame:
    """Generate a synthetic Amazon video reviews frame.

    Parameters
    ----------
    preset : str or GeneratorConfig
        A name in :data:`PRESETS` (``"tiny"``, ``"default"``, ``"full"``) or a config.
    seed : int
        Seed of ``numpy.random.default_rng``; the same preset and seed give the same frame.

    Returns
    -------
    pandas.DataFrame
        The 15 columns of :data:`recsys.data.schema.AMAZON_COLUMNS` in order, ``n_reviews``
        rows in random order. ``customer_id``, ``product_parent``, ``star_rating``,
        ``helpful_votes`` and ``total_votes`` are int64; the others are pandas strings
        (``review_date`` as ``"YYYY-MM-DD"``). ``review_headline``, ``review_body`` and
        ``review_date`` have a few missing values (NaN).

    Raises
    ------
    ConfigError
        If the preset name is unknown or the config is inconsistent.
    """
    cfg = _resolve_config(preset)
    t0 = time.perf_counter()
    rng_cat, rng_cust, rng_pick, rng_rows = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    n_dup, n_rereview = _extra_counts(cfg)
    n_picks = cfg.n_reviews - n_dup - n_rereview
    cat = _make_catalogue(cfg, rng_cat)

    # Customers: activity, taste over genres, liking of genres, rating bias.
    n_c, n_genres = cfg.n_customers, cfg.n_genres
    counts = _activity(cfg, rng_cust, n_picks)
    base_w = (_GENRE_WEIGHTS[:n_genres] / _GENRE_WEIGHTS[:n_genres].sum()).astype(np.float32)
    theta = rng_cust.standard_gamma(
        cfg.taste_concentration * base_w, size=(n_c, n_genres), dtype=np.float32
    )
    total = theta.sum(axis=1, keepdims=True)
    theta = np.where(total > 0, theta / np.where(total > 0, total, 1), base_w)
    log_theta = np.log(theta + np.float32(0.01))
    log_theta -= log_theta.mean()
    log_theta /= max(float(log_theta.std()), 1e-6)  # all equal with a single genre
    rho = np.float32(cfg.taste_like_corr)
    like = rho * log_theta + np.sqrt(1 - rho * rho) * rng_cust.standard_normal(
        (n_c, n_genres), dtype=np.float32
    )
    del log_theta
    bias = rng_cust.normal(0.0, cfg.customer_bias_sd, size=n_c)
    verified_p = rng_cust.beta(4.0 * cfg.verified_rate + 0.1, 4.0 * (1 - cfg.verified_rate) + 0.1, n_c)
    customer_ids = _unique_ints(rng_cust, n_c, 10_000, 53_100_000)

    # Picks, in order for every customer.
    cust = np.repeat(np.arange(n_c), counts)
    block_start = np.cumsum(counts) - counts
    first = np.zeros(n_picks, dtype=bool)
    first[block_start] = True
    sampler = _PickSampler(cat, theta, cfg.genre_focus)
    del theta
    prod = sampler.draw(rng_pick, cust)
    chain = (rng_pick.random(n_picks) < cfg.next_season_prob) & ~first
    for _ in range(3):  # a few passes so that chains of seasons follow each other
        prev = np.concatenate([[-1], prod[:-1]])
        nxt = np.where(chain, cat.next_season[np.maximum(prev, 0)], -1)
        prod = np.where(nxt >= 0, nxt, prod)
    _resolve_repeats(rng_pick, cust, prod, n_c, cfg.n_products, sampler)
    del sampler

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
    score = (
        bias[cust]
        + cat.quality[prod]
        + cfg.affinity_weight * affinity
        + rng_rows.normal(0.0, cfg.rating_noise_sd, size=n_picks)
    )
    cuts = np.quantile(score, np.cumsum(cfg.star_shares)[:-1])
    star = 1 + np.searchsorted(cuts, score, side="right")

    # Re-reviews: same customer and video, a date between the original and their last review.
    src = np.sort(rng_rows.permutation(n_picks)[:n_rereview])
    last_day = day[block_start + counts - 1]
    rr_cust = cust[src]
    rr_day = day[src] + np.floor(
        rng_rows.random(n_rereview) * (last_day[rr_cust] - day[src] + 1)
    ).astype(np.int64)
    rr_score = score[src] + rng_rows.normal(0.0, cfg.rating_noise_sd, size=n_rereview)
    rr_star = np.where(
        rng_rows.random(n_rereview) < 0.5, star[src], 1 + np.searchsorted(cuts, rr_score, side="right")
    )
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
    review_id_raw = _review_ids(rng_rows, n_src)
    para_pool, para_off, head_pool, head_off = _text_pools()
    sentiment = np.array([0, 0, 0, 1, 2, 2])[star]
    para_size = np.diff(para_off)
    para1 = para_off[sentiment] + np.floor(rng_rows.random(n_src) * para_size[sentiment]).astype(np.int64)
    para2 = para_off[sentiment] + np.floor(rng_rows.random(n_src) * para_size[sentiment]).astype(np.int64)
    two = rng_rows.random(n_src) < 0.3
    empty = len(para_pool) - 1
    para2 = np.where(two, para2, empty)
    sep = np.where(two, rng_rows.integers(1, len(_BODY_SEPARATORS), size=n_src), 0)
    head_size = np.diff(head_off)
    head_pick = np.floor(rng_rows.random(n_src) * head_size[star - 1]).astype(np.int64)
    head_pick = np.where(rng_rows.random(n_src) < 0.35, 0, head_pick)  # "Five Stars" & co.
    headline = head_off[star - 1] + head_pick
    n_null = max(cfg.min_nulls, round(cfg.null_rate * n_src))
    null_masks = [np.zeros(n_src, dtype=bool) for _ in range(3)]
    for mask in null_masks:
        mask[rng_rows.permutation(n_src)[: min(n_null, n_src)]] = True

    # Final rows: every source row once plus exact duplicates, shuffled.
    dup_src = rng_rows.permutation(n_src)[:n_dup]
    rows = rng_rows.permutation(np.concatenate([np.arange(n_src), dup_src]))
    c, p = cust[rows], prod[rows]
    head_null, body_null, date_null = (m[rows] for m in null_masks)
    body = pc.binary_join_element_wise(
        para_pool.take(pa.array(para1[rows], mask=body_null)),
        para_pool.take(pa.array(para2[rows])),
        pa.array(_BODY_SEPARATORS, pa.large_string()).take(pa.array(sep[rows])),
    )
    date_pool = pa.array(np.datetime_as_string(days, unit="D").astype(object), pa.large_string())
    yn = pa.array(["N", "Y"], pa.large_string())
    n_rows = len(rows)
    zeros = pa.array(np.zeros(n_rows, dtype=np.int64))
    columns = {
        "marketplace": pa.array(["US"], pa.large_string()).take(zeros),
        "customer_id": customer_ids[c],
        "review_id": review_id_raw.take(pa.array(rows)),
        "product_id": cat.product_ids.take(pa.array(p)),
        "product_parent": cat.parents[p],
        "product_title": cat.titles.take(pa.array(p)),
        "product_category": pa.array(["Digital_Video_Download"], pa.large_string()).take(zeros),
        "star_rating": star[rows],
        "helpful_votes": helpful_votes[rows],
        "total_votes": total_votes[rows],
        "vine": yn.take(pa.array(vine[rows].astype(np.int64))),
        "verified_purchase": yn.take(pa.array(verified[rows].astype(np.int64))),
        "review_headline": head_pool.take(pa.array(headline[rows], mask=head_null)),
        "review_body": body,
        "review_date": date_pool.take(pa.array(day[rows], mask=date_null)),
    }
    frame = pd.DataFrame(
        {
            name: pd.Series(values, dtype="str")
            if isinstance(values, (pa.Array, pa.ChunkedArray))
            else pd.Series(np.asarray(values, dtype=np.int64))
            for name, values in columns.items()
        }
    )
    logger.debug(
        "generated %d synthetic reviews (%d customers, %d videos) in %.2fs",
        len(frame),
        n_c,
        cfg.n_products,
        time.perf_counter() - t0,
    )
    return frame


def _review_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` distinct review ids: "R" + 13 (sometimes 12) uppercase alphanumerics."""
    digits = rng.integers(0, 36, size=(n, 13), dtype=np.uint8)
    long_ = rng.random(n) < 0.85
    digits[long_, 0] = rng.integers(1, 4, size=int(long_.sum()), dtype=np.uint8)
    powers = 36 ** np.arange(11, -1, -1, dtype=np.int64)
    while True:
        key = digits[:, :12].astype(np.int64) @ powers
        order = np.argsort(key, kind="stable")
        clash = np.zeros(n, dtype=bool)
        clash[order[1:]] = key[order[1:]] == key[order[:-1]]
        if not clash.any():
            break
        digits[clash] = rng.integers(0, 36, size=(int(clash.sum()), 13), dtype=np.uint8)
    raw = np.empty((n, 14), dtype=np.uint8)
    raw[:, 0] = ord("R")
    raw[:, 1:] = _ALNUM[digits]
    raw[~long_, 13] = 0  # numpy strips trailing NULs: 12 characters after the "R"
    return pa.array(raw.view("S14").ravel()).cast(pa.large_string())


# --------------------------------------------------------------------------------------------
# Writing


def _column_text(values: pd.Series, name: str) -> pa.Array:
    """Column as Arrow strings, missing values as empty strings; rejects tabs and newlines."""
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):  # pragma: no cover - depends on pandas internals
        arr = arr.combine_chunks()
    if pa.types.is_floating(arr.type):
        as_float = values.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = as_float[~np.isnan(as_float)]
        if np.all(finite == np.round(finite)):
            arr = pa.array(np.where(np.isnan(as_float), 0, as_float).astype(np.int64),
                           mask=np.isnan(as_float))  # fmt: skip
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        arr = pc.strftime(arr, format="%Y-%m-%d")
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    bad = pc.any(pc.match_substring_regex(arr, "[\t\n\r]")).as_py()
    if bad:
        raise DataError(
            f"column {name!r} contains a tab or newline; the TSV is written without quoting, "
            "so replace them first (e.g. df[col].str.replace(r'[\\t\\n\\r]', ' ', regex=True))"
        )
    return pc.fill_null(arr, "")


def _malformed_line(fields: list[str], kind: int, rng: np.random.Generator) -> tuple[str, str]:
    """Turn a row's fields into a malformed line; returns (line, reason)."""
    fields = list(fields)
    if kind == 0:
        pos = int(rng.integers(1, len(fields)))
        fields.insert(pos, ["Special Edition", "", "extra", "HD"][int(rng.integers(4))])
        return "\t".join(fields), MALFORMED_REASONS[0]
    if kind == 1:
        return "\t".join(fields[: int(rng.integers(3, 12))]), MALFORMED_REASONS[1]
    star_col = AMAZON_COLUMNS.index("star_rating")
    if kind in (2, 4):
        fields[star_col] = "five" if kind == 2 else ""
        return "\t".join(fields), MALFORMED_REASONS[2]
    fields[star_col] = {3: "0", 5: "6", 6: "7"}[kind]
    return "\t".join(fields), MALFORMED_REASONS[3]


def write_reviews_tsv(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    malformed: int | None = None,
    non_utf8: int | None = None,
    seed: int = 0,
    compresslevel: int = 6,
    chunk_rows: int = 250_000,
) -> WriteInfo:
    """Write a reviews frame as an Amazon-style TSV, with a few malformed lines injected.

    The file has a header line (the 15 column names), then one line per row: fields joined by
    tabs, no quoting or escaping (like the real file), ``"\\n"`` line ends, missing values as
    empty fields. A ``.gz`` suffix writes gzip with a fixed header (no name, mtime 0), so the
    same frame and seed give the same bytes. The write is atomic (temporary file, then rename).

    Malformed lines are *extra* lines (every row of ``df`` is written once, in order), at
    seeded positions, cycling through: too many fields, too few fields, star_rating "five",
    star_rating 0, empty star_rating, star_rating 6, star_rating 7. Separately, the
    ``review_body`` of a few rows gets non-UTF-8 bytes appended (e.g. latin-1 ``caf\\xe9``);
    those lines are valid rows.

    Parameters
    ----------
    df : pandas.DataFrame
        Exactly the columns of :data:`recsys.data.schema.AMAZON_COLUMNS`, in order.
    path : str or os.PathLike
        Target file; ``.gz`` for gzip.
    malformed : int, optional
        Number of malformed lines; default ``max(5, len(df) // 200_000)`` (0 if ``df`` is
        empty).
    non_utf8 : int, optional
        Number of rows whose body gets non-UTF-8 bytes; default
        ``max(3, len(df) // 500_000)``, at most ``len(df)``.
    seed : int
        Seed for the positions and the content of the injected lines.
    compresslevel : int
        gzip level for ``.gz`` targets.
    chunk_rows : int
        Rows formatted at a time (bounds memory).

    Returns
    -------
    WriteInfo

    Raises
    ------
    DataError
        If the columns are not the 15 Amazon columns in order, or a field contains a tab or
        a newline (they cannot be written without quoting).
    ConfigError
        If ``malformed`` or ``non_utf8`` is negative.
    """
    t0 = time.perf_counter()
    if tuple(df.columns) != AMAZON_COLUMNS:
        raise DataError(
            f"expected the 15 Amazon review columns in order {list(AMAZON_COLUMNS)}; "
            f"got {list(df.columns)}. Select them with df[list(AMAZON_COLUMNS)]"
        )
    n = len(df)
    for name, value in (("malformed", malformed), ("non_utf8", non_utf8)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer or None, got {value!r}")
    n_bad = (max(5, n // 200_000) if malformed is None else malformed) if n else 0
    n_non_utf8 = min(n, max(3, n // 500_000) if non_utf8 is None else non_utf8)
    rng = np.random.default_rng(seed)
    n_lines = n + n_bad
    bad_pos = np.sort(rng.permutation(n_lines)[:n_bad])  # 0-based data-line index
    is_bad = np.zeros(n_lines, dtype=bool)
    is_bad[bad_pos] = True
    row_line = np.flatnonzero(~is_bad)  # data-line index of every row
    body_null = df["review_body"].isna().to_numpy()
    candidates = np.flatnonzero(~body_null) if (~body_null).sum() >= n_non_utf8 else np.arange(n)
    non_utf8_rows = np.sort(rng.permutation(candidates)[:n_non_utf8])
    snippets = {int(r): _NON_UTF8_SNIPPETS[i % len(_NON_UTF8_SNIPPETS)]
                for i, r in enumerate(non_utf8_rows)}  # fmt: skip
    template_rows = rng.integers(0, max(n, 1), size=n_bad)
    kinds = np.arange(n_bad) % 7
    fresh_ids = _review_ids(rng, n_bad).to_pylist() if n_bad else []
    body_col = AMAZON_COLUMNS.index("review_body")

    malformed_lines: dict[int, tuple[str, str]] = {}  # data-line index -> (line, reason)
    if n_bad:
        templates = df.iloc[template_rows]
        texts = [_column_text(templates[col], col).to_pylist() for col in AMAZON_COLUMNS]
        for i, pos in enumerate(bad_pos):
            fields = [texts[j][i] for j in range(len(AMAZON_COLUMNS))]
            fields[AMAZON_COLUMNS.index("review_id")] = fresh_ids[i]
            malformed_lines[int(pos)] = _malformed_line(fields, int(kinds[i]), rng)
    # Malformed lines written just before row k (k == n: after the last row).
    before_row: dict[int, list[bytes]] = {}
    for pos in bad_pos:
        k = int(np.searchsorted(row_line, pos))
        before_row.setdefault(k, []).append(malformed_lines[int(pos)][0].encode() + b"\n")

    path = Path(path)
    gz = path.suffix == ".gz"
    newline, tab, empty = (pa.scalar(c, pa.large_string()) for c in ("\n", "\t", ""))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            out = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel)
                if gz
                else raw
            )
            try:
                out.write(("\t".join(AMAZON_COLUMNS) + "\n").encode())
                for lo in range(0, n, chunk_rows):
                    hi = min(n, lo + chunk_rows)
                    part = df.iloc[lo:hi]
                    cols = [_column_text(part[col], col) for col in AMAZON_COLUMNS]
                    cols[-1] = pc.binary_join_element_wise(cols[-1], newline, empty)
                    lines = pc.binary_join_element_wise(*cols, tab)
                    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[
                        lines.offset : lines.offset + len(lines) + 1
                    ]
                    data = memoryview(lines.buffers()[2])
                    cursor = lo  # first row of the chunk not written yet
                    special = sorted(r for r in (*before_row, *snippets) if lo <= r < hi)
                    for r in dict.fromkeys(special):
                        out.write(data[offsets[cursor - lo] : offsets[r - lo]])
                        cursor = r
                        for line in before_row.get(r, ()):
                            out.write(line)
                        if r in snippets:
                            row = bytes(data[offsets[r - lo] : offsets[r - lo + 1] - 1])
                            fields = row.split(b"\t")
                            fields[body_col] += snippets[r]
                            out.write(b"\t".join(fields) + b"\n")
                            cursor = r + 1
                    out.write(data[offsets[cursor - lo] : offsets[hi - lo]])
                for line in before_row.get(n, ()):
                    out.write(line)
            finally:
                if gz:
                    out.close()
            raw.flush()
            os.fsync(raw.fileno())

    info = WriteInfo(
        path=path,
        n_lines=n_lines,
        malformed_line_numbers={pos + 2: reason for pos, (_, reason) in malformed_lines.items()},
        non_utf8_line_numbers=[int(row_line[r]) + 2 for r in non_utf8_rows],
        valid_rows=n,
    )
    logger.debug("wrote %d lines to %s in %.2fs", n_lines, path, time.perf_counter() - t0)
    return info


def write_preset(
    preset: str | GeneratorConfig, path: str | os.PathLike, seed: int = 0, **kw
) -> WriteInfo:
    """Generate ``preset`` with ``seed`` and write it with :func:`write_reviews_tsv`.

    Keyword arguments go to :func:`write_reviews_tsv` (``seed`` is used for both).
    """
    return write_reviews_tsv(generate_reviews(preset, seed=seed), path, seed=seed, **kw)

