"""The video catalogue of the synthetic dataset: genres, popularity, quality, titles and ids.

Titles are drawn from a fixed vocabulary with the caller's generator, so the same seed gives the
same catalogue (changing the vocabulary or the order of draws changes every title and id).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from .model import GeneratorConfig

#: Genre names, most common first; a config uses the first ``n_genres`` of them.
GENRES: tuple[str, ...] = tuple(
    "Drama|Comedy|Action & Adventure|Kids & Family|Documentary|Thriller|Romance|Science Fiction|"
    "Horror|Crime|Mystery|Fitness|Animation|Fantasy|Reality TV|Anime|Faith & Spirituality|"
    "Music & Concerts|Western|Sports|Military & War|International|Special Interest|Independent".split("|")
)
GENRE_WEIGHTS = np.array(
    [14, 13, 9, 7, 6, 7, 5, 5, 5, 4, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 2], dtype=np.float64
)
# Title style of each genre (see _TITLE_TEMPLATES).
_GENRE_STYLE = (
    "story", "story", "story", "kids", "doc", "story", "story", "story", "story", "story",
    "story", "fitness", "kids", "story", "reality", "anime", "faith", "music", "story",
    "sports", "story", "story", "doc", "story",
)  # fmt: skip

# Title vocabulary (fixed: any change changes every title drawn from a seed)

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
    "n": "10 15 20 30 45 60".split(),  # minutes of a workout
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

_SLOT = re.compile(r"\{([a-z]+?)(2?)\}")


def _fill(template: str, uniforms: Iterator[float]) -> str:
    """Fill ``{key}`` / ``{key2}`` slots of ``template`` with words of ``_W[key]``.

    ``{key2}`` differs from ``{key}`` when both appear. ``uniforms`` yields floats in [0, 1).
    """
    chosen: dict[str, int] = {}

    def pick(match: re.Match[str]) -> str:
        key, second = match.group(1), match.group(2)
        values = _W[key]
        if second and key in chosen and len(values) > 1:
            i = (chosen[key] + 1 + int(next(uniforms) * (len(values) - 1))) % len(values)
        else:
            i = int(next(uniforms) * len(values))
            chosen.setdefault(key, i)
        return values[i]

    return _SLOT.sub(pick, template)


@dataclass
class Catalogue:
    """Per video (``n_products`` of them): genres, popularity, quality, titles and ids."""

    genres: np.ndarray  # (n_products, 3) genre index per slot
    genre_w: np.ndarray  # (n_products, 3) weights, rows sum to 1, zero for unused slots
    pop: np.ndarray  # (n_products,) popularity, sums to 1
    quality: np.ndarray  # (n_products,)
    next_season: np.ndarray  # (n_products,) next season's index or -1
    titles: pa.Array
    product_ids: pa.Array
    parents: np.ndarray  # (n_products,) int64


def _uniform_stream(rng: np.random.Generator) -> Iterator[float]:
    """An endless stream of floats in [0, 1) drawn from ``rng`` in blocks."""
    while True:
        yield from rng.random(65_536).tolist()


def _unit_titles(rng: np.random.Generator, styles: list[str], is_series: np.ndarray) -> list[str]:
    """One distinct base title per unit (film, series or two-edition title).

    A title already taken is redrawn a few times (from the generic templates once the genre's
    own are exhausted); then it gets a year ("Title (1987)") and, if still taken, a sequel
    number ("Title 2").
    """
    titles: dict[str, None] = {}  # in order
    uniforms = _uniform_stream(rng)
    for i, style in enumerate(styles):
        series_style = is_series[i] and style not in ("fitness", "kids", "anime", "reality")
        templates = _SERIES_TEMPLATES if series_style else _TITLE_TEMPLATES[style]
        for attempt in range(6):
            if attempt == 2:  # the genre's own templates are exhausted: any drama-like title
                templates = _SERIES_TEMPLATES if is_series[i] else _TITLE_TEMPLATES["story"]
            title = _fill(templates[int(next(uniforms) * len(templates))], uniforms)
            title = title[0].upper() + title[1:]
            if title not in titles:
                break
        else:
            title = f"{title} ({1950 + int(next(uniforms) * 66)})"
            base, sequel = title, 2
            while title in titles:
                title = f"{base[: base.rindex(' (')]} {sequel}"
                sequel += 1
        titles[title] = None
    return list(titles)


def make_catalogue(cfg: GeneratorConfig, rng: np.random.Generator) -> Catalogue:
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
    base_w = GENRE_WEIGHTS[:n_genres] / GENRE_WEIGHTS[:n_genres].sum()
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
    season_fmt = ["{s} Vol. {k}" if style == "fitness" else _SEASON_FORMATS[i]
                  for style, i in zip(styles, fmt_pick, strict=True)]  # fmt: skip
    unit_fmt = np.where(kind == 1, season_fmt, "{s}")
    hd = (rng.random(n) < 0.04) & (kind[prod_unit] != 2)  # editions have no [HD] copy
    titles = [
        unit_fmt[u].format(s=base_titles[u], k=k + 1) + " [HD]" * h
        for u, k, h in zip(prod_unit.tolist(), slot.tolist(), hd.tolist(), strict=True)
    ]

    # Identifiers: product ids "B00" + 7 base-36 characters through a random bijection;
    # product_parent: one 9-digit number per unit for editions, per product otherwise.
    space = 36**7
    a = int(rng.integers(1, space // 6)) * 6 + 1  # coprime with 36
    x = (a * np.arange(n, dtype=np.int64) + int(rng.integers(space))) % space
    digits = (x[:, None] // (36 ** np.arange(6, -1, -1, dtype=np.int64))) % 36
    product_ids = alnum_strings("B00", digits)
    parent_key = np.where(prod_kind == 2, n + prod_unit, np.arange(n))
    parent_values = unique_ints(rng, 2 * n, 100_000_000, 1_000_000_000)
    parents = parent_values[parent_key]

    return Catalogue(
        genres=unit_genres[prod_unit].astype(np.int64),
        genre_w=gw[prod_unit],
        pop=pop,
        quality=quality,
        next_season=next_season.astype(np.int64),
        titles=pa.array(titles, pa.large_string()),
        product_ids=product_ids,
        parents=parents.astype(np.int64),
    )


def unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` distinct integers in ``[low, high)`` in random order (``n`` << ``high - low``)."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        extra = rng.integers(low, high, size=int((n - len(out)) * 1.05) + 16)
        out = np.unique(np.concatenate([out, extra]))
    return rng.permutation(out)[:n]


def alnum_strings(prefix: str, digits: np.ndarray) -> pa.Array:
    """Arrow strings: ``prefix``, then per column of ``digits`` (n, k) one of 0-9A-Z (0..35) or,
    for 36 in the last column, nothing."""
    chars = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\0", dtype=np.uint8)[digits]
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    raw = np.hstack([np.broadcast_to(head, (len(digits), len(head))), chars])
    # numpy drops the trailing NULs of fixed-width bytes
    return pa.array(raw.view(f"S{raw.shape[1]}").ravel()).cast(pa.large_string())
