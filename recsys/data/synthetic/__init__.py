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
  and review bodies with non-UTF-8 bytes. Review text is a small fixed set of snippets with
  what a loader must cope with (quotes, HTML, non-ASCII, a long paragraph); nothing reads it.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same preset and seed give the
same frame and the same file bytes. The rating model is in :mod:`.model` (the video catalogue in
:mod:`.catalogue`), the file writer in :mod:`.writer`.

Examples
--------
>>> from recsys.data.synthetic import generate_reviews, write_reviews_tsv
>>> df = generate_reviews("tiny", seed=0)
>>> info = write_reviews_tsv(df, "reviews.tsv.gz")  # doctest: +SKIP
"""

from .catalogue import GENRES
from .model import PRESETS, GeneratorConfig, generate_reviews
from .writer import MALFORMED_REASONS, WriteInfo, write_preset, write_reviews_tsv

__all__ = [
    "GENRES", "GeneratorConfig", "GENERATOR_VERSION", "MALFORMED_REASONS", "PRESETS", "WriteInfo",
    "generate_reviews", "write_preset", "write_reviews_tsv",
]  # fmt: skip

#: Bumped whenever the written file changes for a given preset and seed (the cache key of the
#: built-in datasets). 2: review text reduced to a fixed set of snippets (the ratings of
#: ``default`` and ``full`` unchanged); ``tiny`` has a catalogue larger than K = 100.
GENERATOR_VERSION = 2
