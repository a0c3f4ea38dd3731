"""Generate the bundled sample corpora and the sample tokenizer, deterministically, offline.

The samples let `make demo` and the tests run the whole pipeline on data shaped exactly like the
published corpora (file names, compression, record fields), without downloading anything. The
text is synthetic, built from templates and word lists, so that the files are small (a few MB),
free to redistribute and byte-identical on every run with the same seed.

Layouts: each folder is one dataset as `huggingface-cli download --repo-type dataset NAME
--local-dir ROOT` lays it out, held-out splits and samples included (a few records each), so
recipes select their files the way they must on a real download. Where each fact about a
layout comes from (dataset cards, loading scripts, code that reads them) and which ones could
not be checked is in README.md, "Real datasets".

- `proofpile/`: hoskinson-center/proof-pile. `train/proofpile_train_{0,1}.jsonl.gz`,
  `dev/proofpile_dev.jsonl.gz`, `test/proofpile_test.jsonl.gz`; gzipped JSON lines
  `{"text": ..., "meta": {...}}` with `meta` an object in the raw files: arXiv rows
  `{"config": "arxiv", "file": ...}`, formal-library rows `{"subset_name": "curated",
  "file": "formal/lean/..."}`. Texts: LaTeX theorem/proof papers and Lean 4 files.
- `proof-pile-2/`: EleutherAI/proof-pile-2. `arxiv/`, `algebraic-stack/`, `open-web-math/`,
  each with `train/`, `validation/`, `test/` holding flat files (`arXiv_000.jsonl.zst`,
  `github-lean-train-0000.jsonl.zst` and `python0000.jsonl.zst`, `shard-0000.jsonl.zst`,
  `val.jsonl.zst`, ...). Zstd JSON lines, three concatenated frames per file; `meta` an object
  (its keys here are illustrative).
- `musicpile/`: m-a-p/MusicPile. `data/train-0000{0,1}-of-00002-<hash>.parquet`, columns `id`
  (int64), `text`, `src`, several row groups. The texts are ABC tunes (some in the
  Human/Assistant chat form), Humdrum **kern scores, and instruction/math rows. MusicPile does
  not document its `src` values, so the sample's say they are made up (`synthetic:abc`, ...).
- `chempile/chempile-{education,reasoning,paper}/`: jablonkagroup/chempile-education,
  -reasoning and -paper, one folder per config (`LibreText_Chemistry-default/`,
  `chemistry_stackexchange-raw_data/`, `chemrxiv_processed-default/`) holding
  `train-0000N-of-0000M.parquet`, `val-...` and `test-...`; text column `text` (the reasoning
  config also `title`, `q`, `a`, `split`). Texts embed SMILES in procedures, abstracts,
  worked calculations and textbook sections.
- `fineweb/`: HuggingFaceFW/fineweb. `data/CC-MAIN-*/000_00000.parquet`, one file per dump
  with FineWeb's columns `text, id, dump, url, date, file_path, language, language_score,
  token_count` (token_count approximates GPT-2 tokens by counting words and punctuation), and
  `sample/10BT/000_00000.parquet`, which repeats every 50th document of `data/` as the real
  `sample/` folders repeat documents of the full set.
- `dclm/`: mlfoundations/dclm-baseline-1.0.
  `global-shard_01_of_10/local-shard_0_of_10/shard_0000000{0,1}_processed.jsonl.zst` (the Hub
  repo spells it `.jsonl.zst`; DCLM's S3 pools use `.jsonl.zstd`), with DCLM's fields (`text`,
  `url`, `metadata`, `language_id_whole_page_fasttext`,
  `fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob`, ...).

Web text (fineweb + dclm) is about 60% of the tokens, as it is the large side of every mix;
the whole set is about 4 MB on disk and 3.9M tokens.
`SHA256SUMS` lists every file with the library versions that wrote it: parquet, gzip and zstd
bytes depend on those, the decoded records only on the seed.

The tokenizer (`pipelines/tokenizer.json`) is a GPT-2-style byte-level BPE, vocab 8192, with
`<|endoftext|>` (id 0) and `<|pad|>` (id 1), trained on the samples' training files.

    python pipelines/make_samples.py                  # samples + tokenizer
    python pipelines/make_samples.py --no-tokenizer --out /tmp/s --scale 0.1
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

HERE = Path(__file__).resolve().parent
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]
MUSIC_SOURCES = ("abc", "irishman", "kern")  # kinds of sample text, not MusicPile's values
OTHER_SOURCES = ("alpaca", "gsm8k", "camel")
SRC_PREFIX = "synthetic:"  # sample `src` values say they are invented
CHECKSUMS = "SHA256SUMS"
T = TypeVar("T")


class Rand:
    """Random choices built only on `random.Random.random()`, the one stream Python promises
    to keep across versions, so the samples do not change when Python or numpy does."""

    def __init__(self, seed: int, label: str = "") -> None:
        digest = hashlib.sha256(f"{seed}/{label}".encode()).digest()
        self._r = random.Random(int.from_bytes(digest[:8], "big"))

    def between(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + int(self._r.random() * (hi - lo + 1))

    def pick(self, items: Sequence[T]) -> T:
        return items[int(self._r.random() * len(items))]

    def chance(self, p: float) -> bool:
        return self._r.random() < p

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self._r.random()

    def hex(self, n: int) -> str:
        return "".join(self.pick("0123456789abcdef") for _ in range(n))


# --------------------------------------------------------------------------------------------
# Web text: topics with their own words, generic sentence templates, several page types.


def words(text: str) -> list[str]:
    """A comma-separated word list (entries may hold spaces: "bus route")."""
    return [w.strip() for w in text.split(",")]


TOPICS: dict[str, dict[str, list[str]]] = {
    "cooking": {
        "noun": words(
            "onion, garlic, cast-iron skillet, recipe, tomato sauce, pizza dough, oven, broth, "
            "lentil stew, casserole, spice blend, marinade, pastry, brown butter, vinegar, "
            "risotto, tortilla, dumpling, glaze, chickpea curry, sourdough starter, stock pot"
        ),
        "verb": words("simmer, chop, roast, whisk, season, knead, marinate, braise, toast, stir"),
        "adj": words("crispy, tender, savory, fragrant, golden, hearty, tangy, silky, smoky"),
        "thing": words("weeknight dinner, holiday menu, pantry clear-out, Sunday roast, potluck"),
    },
    "gardening": {
        "noun": words(
            "tomato plant, seedling, compost heap, mulch, trellis, hedge, tulip bulb, "
            "perennial, raised bed, fertilizer, aphid, root ball, cutting, clay soil, "
            "greenhouse, hydrangea, rain barrel, pea vine"
        ),
        "verb": words("prune, water, transplant, harvest, fertilize, weed, sow, divide, stake"),
        "adj": words("shady, sandy, drought-tolerant, leafy, overgrown, fertile, native, hardy"),
        "thing": words("vegetable patch, spring planting, backyard border, balcony garden"),
    },
    "travel": {
        "noun": words(
            "itinerary, hostel, night ferry, passport, layover, museum pass, train station, "
            "guidebook, harbor, coastal trail, visa, carry-on, night market, cathedral, "
            "boardwalk, rail pass, rental car, walking tour"
        ),
        "verb": words("book, explore, pack, hike, navigate, visit, reserve, cross, photograph"),
        "adj": words("crowded, scenic, affordable, remote, historic, charming, walkable, coastal"),
        "thing": words("long weekend, road trip, city break, two-week itinerary, day trip"),
    },
    "finance": {
        "noun": words(
            "budget, mortgage, pension, dividend, index fund, credit score, invoice, "
            "tax return, savings account, car loan, interest rate, emergency fund, portfolio, "
            "insurance premium, utility bill, student loan"
        ),
        "verb": words("save, invest, refinance, borrow, track, diversify, deduct, repay, review"),
        "adj": words("monthly, variable, tax-free, long-term, risky, conservative, fixed, annual"),
        "thing": words("household budget, retirement plan, first home, side business"),
    },
    "diy": {
        "noun": words(
            "drywall, kitchen faucet, door hinge, circuit breaker, orbital sander, grout, "
            "ladder, floating shelf, floor joist, caulk, drill bit, baseboard, thermostat, "
            "primer, deck board, window frame"
        ),
        "verb": words("install, sand, patch, replace, tighten, measure, paint, drill, seal"),
        "adj": words("loose, cracked, sturdy, waterproof, uneven, cordless, damp, reclaimed"),
        "thing": words("bathroom remodel, weekend project, kitchen upgrade, garage workshop"),
    },
    "health": {
        "noun": words(
            "workout, hamstring stretch, protein shake, sleep schedule, heart rate, posture, "
            "knee injury, water bottle, morning routine, vitamin D, core muscle, treadmill, "
            "yoga mat, step count"
        ),
        "verb": words("stretch, train, recover, rest, strengthen, monitor, walk, lift, log"),
        "adj": words("gentle, intense, balanced, restful, sore, consistent, low-impact, daily"),
        "thing": words("marathon plan, recovery week, beginner program, office job"),
    },
    "software": {
        "noun": words(
            "database, home server, shell script, dependency, web browser, cache, SQL query, "
            "container, laptop, router firmware, backup drive, password manager, spreadsheet, "
            "plugin, terminal, config file, cron job"
        ),
        "verb": words("configure, update, debug, deploy, install, restart, migrate, encrypt"),
        "adj": words("outdated, secure, open-source, lightweight, slow, broken, compatible"),
        "thing": words("home network, small office, side project, school laptop"),
    },
    "community": {
        "noun": words(
            "city council, public library, street festival, volunteer, school board, "
            "skate park, footbridge, fundraiser, parking ordinance, playground, health clinic, "
            "bus route, farmers market, recycling program"
        ),
        "verb": words("approve, host, organize, fund, repair, vote on, open, announce, expand"),
        "adj": words("local, annual, public, temporary, new, controversial, free, seasonal"),
        "thing": words("town meeting, neighborhood cleanup, budget vote, summer event"),
    },
    "history": {
        "noun": words(
            "manuscript, treaty, castle, railway line, harbor wall, census record, archive, "
            "monastery, water mill, regiment, royal charter, dynasty, canal, parish register"
        ),
        "verb": words("found, rebuild, document, excavate, restore, map, settle, abandon"),
        "adj": words("medieval, colonial, forgotten, industrial, ancient, royal, rural"),
        "thing": words("local archive, family history, museum collection, old map"),
    },
    "pets": {
        "noun": words(
            "puppy, kitten, leash, litter box, dog crate, vet visit, chew toy, aquarium, "
            "harness, training treat, animal shelter, groomer, scratching post"
        ),
        "verb": words("adopt, groom, feed, walk, socialize, reward, train, brush"),
        "adj": words("anxious, playful, senior, shy, energetic, rescued, curious"),
        "thing": words("new puppy, first week home, vet checkup, long car ride"),
    },
    "cars": {
        "noun": words(
            "brake pad, timing belt, spark plug, tire pressure, windshield wiper, alternator, "
            "oil filter, dashboard light, transmission fluid, roof rack, battery terminal, "
            "catalytic converter, hatchback, pickup truck"
        ),
        "verb": words("inspect, rotate, flush, jump-start, tow, lease, detail, service"),
        "adj": words("rusty, fuel-efficient, used, squeaky, electric, all-wheel-drive, noisy"),
        "thing": words("winter commute, cross-country drive, first car, annual inspection"),
    },
    "photography": {
        "noun": words(
            "tripod, prime lens, shutter speed, aperture, histogram, memory card, viewfinder, "
            "polarizing filter, light meter, softbox, raw file, camera strap, golden hour"
        ),
        "verb": words("expose, frame, edit, crop, focus, bracket, shoot, calibrate"),
        "adj": words("blurry, overexposed, moody, grainy, vivid, underexposed, wide-angle"),
        "thing": words("portrait session, street walk, wedding shoot, night sky session"),
    },
    "parenting": {
        "noun": words(
            "bedtime story, lunchbox, car seat, homework folder, stroller, toddler, "
            "screen time, allowance, science fair project, babysitter, growth spurt, tantrum"
        ),
        "verb": words("encourage, schedule, praise, negotiate, supervise, pack, comfort"),
        "adj": words("picky, sleepy, stubborn, cheerful, overtired, independent, cranky"),
        "thing": words("school morning, family holiday, rainy afternoon, first sleepover"),
    },
    "astronomy": {
        "noun": words(
            "telescope, eyepiece, star chart, meteor shower, lunar eclipse, nebula, "
            "binoculars, red flashlight, planisphere, star cluster, light pollution, comet"
        ),
        "verb": words("observe, collimate, sketch, align, spot, track, catalog"),
        "adj": words("faint, cloudless, dark-sky, bright, distant, circumpolar, hazy"),
        "thing": words("observing night, club meeting, camping trip, backyard session"),
    },
    "books": {
        "noun": words(
            "paperback, first edition, book club, reading list, audiobook, library card, "
            "bookmark, short story collection, memoir, translation, sequel, footnote"
        ),
        "verb": words("borrow, annotate, recommend, reread, summarize, shelve, review"),
        "adj": words("dog-eared, out-of-print, gripping, slow-burning, forgettable, witty"),
        "thing": words("summer reading, long flight, book swap, winter evening"),
    },
}

ADVERBS = words("usually, often, rarely, carefully, slowly, quickly, regularly, properly")
NAMES = words(
    "Maria, James, Aisha, Tom, Priya, Daniel, Sofia, Kenji, Laura, Omar, Grace, Lucas, Hannah, "
    "Mateo, Chloe, Samuel, Nadia, Ethan, Olivia, Ravi, Emma, Noah, Zoe, Ivan, Fatima, Leo"
)
CITIES = words(
    "Portland, Leeds, Austin, Dublin, Halifax, Adelaide, Dayton, Bristol, Tucson, Boulder, "
    "Galway, Perth, Madison, Norwich, Duluth, Wellington"
)
SYLLABLES = words(
    "ash, bram, cal, dun, el, fen, gar, hol, kes, lang, mar, nor, pem, quin, rad, sel, "
    "thorn, ul, ver, wick, ack, ber, den, ford, ham, ley, more, ridge, stead, ton, wood, well"
)
MONTHS = words(
    "January, February, March, April, May, June, July, August, September, October, "
    "November, December"
)

SENTENCES = [
    "Most people {verb} the {noun} without thinking much about the {noun2}.",
    "If you {verb} your {noun} every {n} days, you will notice a difference within a month.",
    "The first time I tried to {verb} a {noun}, nothing went to plan.",
    "There is no single right way to {verb} a {noun}, but a few rules help.",
    "A {adj} {noun} is {adv} the result of patience rather than expensive tools.",
    "{person} from {city} told us that the {noun} was the hardest part.",
    "In {year}, about {pct} percent of readers said they {verb} their {noun} {adv}.",
    "Before you {verb} anything, check the {noun} and the {noun2}.",
    "It sounds obvious, but a {adj} {noun} changes everything about a {thing}.",
    "We spent {n} hours on the {noun} and still had to start over.",
    "Keep a small notebook and write down every time you {verb} the {noun}.",
    "According to {person}, the trick is to {verb} the {noun} {adv}.",
    "A decent {noun} costs around ${price}, which is less than most people expect.",
    "One reader asked whether a {adj} {noun} is worth it; our answer is usually yes.",
    "Do not {verb} the {noun} while the {noun2} is still {adj}.",
    "After {n} weeks, the {noun} looked {adj} and the {noun2} was holding up well.",
    "That is why we recommend you {verb} the {noun} well before the {thing}.",
    "Many guides skip this step, and the {noun} ends up {adj}.",
    "You do not need a {adj} {noun}; a basic one works fine for a {thing}.",
    "{person} still remembers the {thing} when the {noun} finally worked.",
    "The short version: {verb} early, {verb2} often, and leave the {noun} alone.",
    "On a busy day in {month}, the {noun} can take twice as long.",
    "Prices for a {noun} went up by {pct} percent between {year} and {year2}.",
    "Here is what we learned after trying to {verb} {n} different {nouns}.",
    "It is tempting to {verb} the {noun} right away, but wait a day.",
    "The difference between a {adj} {noun} and a {adj2} one is mostly timing.",
    "Ask anyone in {city} and they will tell you the {noun} matters more than the {noun2}.",
    "For a {thing}, plan on {n} {nouns} and one spare {noun2}.",
    "We compared {n} options, and the cheapest {noun} held up best.",
    'As {person} puts it, "you only {verb} a {noun} like that once."',
    "Nobody warned us that the {noun} would need so much attention in {month}.",
    "The {noun} is where most beginners go wrong, and it is an easy fix.",
    "Our neighbors in {city} swear by a {adj} {noun}, and after a season we agree.",
    "If the {noun} seems {adj}, {verb} it again and give it another hour.",
    "A quick search turns up {n} competing opinions about the {noun}.",
    "The {noun} and the {noun2} are related in ways that are easy to miss.",
    "We asked {n} readers how they {verb} a {noun}, and no two answers matched.",
    "Think of the {noun} as an investment rather than a chore.",
    "Last {month}, {person} decided to {verb} the {noun} for the first time.",
    "Skip the {adj} {noun} unless you plan to {verb} it every week.",
    "It took {person} {n} tries to get the {noun} right, and the notes from each try helped.",
    "Whatever you do, label the {noun} before you {verb} it.",
    "A {adj} {noun} will outlast a cheap one by years, in our experience.",
    "There are two schools of thought on how to {verb} a {noun}.",
    "The guide we met in {city} recommends a {adj} {noun} for anyone starting out.",
    "By the end of the {thing}, the {noun} was the least of our worries.",
    "If you only change one thing, {verb} the {noun} {adv}.",
    "The numbers are clear: {pct} percent of problems start with the {noun}.",
    "I used to {verb} the {noun} by hand; now I would not do it any other way.",
    "When the {noun} looks {adj}, the {noun2} is usually to blame.",
    "{person} {surname}, who runs {shop} on {surname2} Street, keeps a {adj} {noun} in stock.",
    "The staff at {shop} in {city} helped us {verb} the {noun} in under an hour.",
    "Dr. {surname} at the {surname2} clinic says a {adj} {noun} is nothing to worry about.",
    "Our thanks to {person} {surname} for the photos of the {noun} in this post.",
    "We drove out to {surname} to see the {noun}, about {n} miles north of {city}.",
    "Update ({month} {year}): {shop} no longer sells the {noun}, so we switched to another.",
]
SHOP_KINDS = words("& Sons, Supply Co., Hardware, Outfitters, Studio, Workshop, Collective")
OPENERS = [
    "Honestly, ",
    "In my experience, ",
    "For what it is worth, ",
    "Of course, ",
    "In practice, ",
    "That said, ",
    "Either way, ",
    "As a rule, ",
    "Then again, ",
]
TITLES = [
    "How to {verb} a {noun} for a {thing}",
    "{n} Things Nobody Tells You About the {Noun}",
    "Why Your {Noun} Looks {Adj} (and How to Fix It)",
    "A Beginner's Guide to the {Noun}",
    "What We Learned From Our {Thing}",
    "The {Adj} {Noun}: Is It Worth It?",
    "{City} Residents Weigh In on the {Noun}",
    "Ask {Person}: Should I {Verb} My {Noun}?",
    "{Noun} vs. {Noun2}: Which Matters More?",
    "Our {year} Guide to the {Adj} {Noun}",
]


def plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def fix_articles(text: str) -> str:
    """'a onion' -> 'an onion' (templates cannot know which word lands after the article)."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


class WebWriter:
    """Fills templates with one topic's words, so a page reads as being about one thing."""

    def __init__(self, rand: Rand) -> None:
        self.r = rand

    def fill(self, template: str, topic: dict[str, list[str]]) -> str:
        r = self.r
        year = r.between(2009, 2023)
        slots: dict[str, Callable[[], str]] = {
            "noun": lambda: r.pick(topic["noun"]),
            "nouns": lambda: plural(r.pick(topic["noun"])),
            "verb": lambda: r.pick(topic["verb"]),
            "adj": lambda: r.pick(topic["adj"]),
            "thing": lambda: r.pick(topic["thing"]),
            "adv": lambda: r.pick(ADVERBS),
            "person": lambda: r.pick(NAMES),
            "surname": lambda: self.surname(),
            "shop": lambda: f"{self.surname()} {r.pick(SHOP_KINDS)}",
            "city": lambda: r.pick(CITIES),
            "month": lambda: r.pick(MONTHS),
            "n": lambda: str(r.between(2, 12)),
            "pct": lambda: str(r.between(5, 85)),
            "price": lambda: str(r.between(8, 400)),
            "year": lambda: str(year),
            "year2": lambda: str(year + r.between(1, 6)),
        }

        def sub(m: re.Match) -> str:
            key = m.group(1)
            lower = key.lower()
            value = slots[lower if lower in slots else lower.rstrip("2")]()
            return value.title() if key[0].isupper() else value

        text = fix_articles(re.sub(r"\{(\w+)\}", sub, template))
        return text[0].upper() + text[1:]

    def surname(self) -> str:
        """Made-up but plausible family and place names: Holstead, Marford, Kesridge."""
        first, second = self.r.pick(SYLLABLES[:20]), self.r.pick(SYLLABLES[16:])
        return (first + second).capitalize()

    def sentence(self, topic: dict[str, list[str]]) -> str:
        opener = self.r.pick(OPENERS) if self.r.chance(0.25) else ""
        text = self.fill(self.r.pick(SENTENCES), topic)
        return opener + text[0].lower() + text[1:] if opener else text

    def paragraph(self, topic: dict[str, list[str]], sentences: tuple[int, int]) -> str:
        return " ".join(self.sentence(topic) for _ in range(self.r.between(*sentences)))

    def page(self) -> tuple[str, str]:
        """(title, text) of one page: a blog post, a how-to, a news item or a review."""
        r = self.r
        topic = TOPICS[r.pick(sorted(TOPICS))]
        title = self.fill(r.pick(TITLES), topic)
        kind = r.pick(("post", "post", "howto", "news", "review"))
        parts = [title]
        if kind == "news":
            parts.append(
                f"{r.pick(CITIES).upper()} ({r.pick(MONTHS)} {r.between(1, 28)}) - "
                + self.paragraph(topic, (2, 4))
            )
        parts += [self.paragraph(topic, (3, 7)) for _ in range(r.between(2, 6))]
        if kind == "howto":
            steps = [
                f"{i}. {self.fill('{verb} the {noun}, then check the {noun2}.', topic)}"
                for i in range(1, r.between(4, 8))
            ]
            parts.insert(2, "Step by step:\n" + "\n".join(steps))
        if kind == "review":
            parts.append(f"Rating: {r.between(2, 5)}/5. {self.paragraph(topic, (1, 3))}")
        if r.chance(0.3):
            parts.append(
                f"Posted by {r.pick(NAMES)} | {r.between(0, 40)} comments | Share this article"
            )
        return title, "\n\n".join(parts)

    def forum(self) -> tuple[str, str]:
        """An ELI5/forum-style question and answers, the kind the DCLM classifier favours."""
        r = self.r
        topic = TOPICS[r.pick(sorted(TOPICS))]
        q = self.fill(
            r.pick(
                [
                    "Why do people {verb} the {noun} before a {thing}?",
                    "ELI5: why does a {adj} {noun} matter so much?",
                    "Is it normal that my {noun} looks {adj} after {n} weeks?",
                    "What is the best way to {verb} a {noun} on a budget?",
                ]
            ),
            topic,
        )
        parts = [q, self.paragraph(topic, (1, 3))]
        for _ in range(r.between(1, 4)):
            user = f"{r.pick(NAMES).lower()}{r.between(1, 99)}"
            parts.append(f"{user} · {r.between(1, 900)} points\n{self.paragraph(topic, (2, 6))}")
        return q, "\n\n".join(parts)


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]


def uuid(r: Rand) -> str:
    h = r.hex(32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def approx_gpt2_tokens(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


SITES = (
    "homeandhearth kitchenjournal theroadahead moneywise fixitweekly dailystride techcorner "
    "riverdaleherald oldmapsociety pawsandwhiskers gardenledger citynotes"
).split()
TLDS = ("com", "org", "net", "co.uk", "com.au", "blog")


def fineweb_rows(r: Rand, dump: str, n: int) -> Iterator[dict]:
    writer = WebWriter(r)
    year = int(dump.split("-")[2])
    for _ in range(n):
        title, text = writer.page()
        stamp = f"{year}{r.between(1, 12):02d}{r.between(1, 28):02d}"
        warc = f"{stamp}{r.between(0, 23):02d}{r.between(0, 59):02d}{r.between(0, 59):02d}"
        yield {
            "text": text,
            "id": f"<urn:uuid:{uuid(r)}>",
            "dump": dump,
            "url": f"https://www.{r.pick(SITES)}.{r.pick(TLDS)}/{year}/{slugify(title)}/",
            "date": f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:]}T{r.between(0, 23):02d}:"
            f"{r.between(0, 59):02d}:{r.between(0, 59):02d}Z",
            "file_path": f"s3://commoncrawl/crawl-data/{dump}/segments/"
            f"{r.between(1700000000000, 1709999999999)}.{r.between(0, 99)}/warc/"
            f"CC-MAIN-{warc}-{warc}-{r.between(0, 899):05d}.warc.gz",
            "language": "en",
            "language_score": round(r.uniform(0.66, 0.99), 6),
            "token_count": approx_gpt2_tokens(text),
        }


def dclm_records(r: Rand, n: int) -> Iterator[dict]:
    writer = WebWriter(r)
    for _ in range(n):
        title, text = writer.forum() if r.chance(0.4) else writer.page()
        url = f"https://{r.pick(SITES)}.{r.pick(TLDS)}/{slugify(title)}"
        date = f"2019-{r.between(1, 12):02d}-{r.between(1, 28):02d}T{r.between(0, 23):02d}:14:06Z"
        yield {
            "bff_contained_ngram_count_before_dedupe": r.between(0, 30),
            "language_id_whole_page_fasttext": {"en": round(r.uniform(0.8, 1.0), 6)},
            "metadata": {
                "Content-Length": str(len(text.encode()) + r.between(200, 9000)),
                "Content-Type": "application/http; msgtype=response",
                "WARC-Date": date,
                "WARC-Record-ID": f"<urn:uuid:{uuid(r)}>",
                "WARC-Target-URI": url,
                "WARC-Type": "response",
            },
            "previous_word_count": len(text.split()) + r.between(0, 300),
            "text": text,
            "url": url,
            "warcinfo": "isPartOf: CC-MAIN-2019-09\npublisher: Common Crawl",
            "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob": round(
                r.uniform(0.018, 0.6), 6
            ),
        }


# --------------------------------------------------------------------------------------------
# Mathematics: LaTeX papers, Lean 4 files, math web pages.

AREAS = {
    "group": ("finite group", "G", ["H", "K", "N"], "subgroup", "normal", r"|G| = {n}"),
    "ring": ("commutative ring", "R", ["I", "J", "P"], "ideal", "prime", r"\dim R = {k}"),
    "graph": (
        "finite graph",
        "\\Gamma",
        ["S", "T", "U"],
        "vertex set",
        "connected",
        r"\Delta(\Gamma) \le {k}",
    ),
    "space": (
        "Banach space",
        "X",
        ["Y", "Z", "V"],
        "closed subspace",
        "complemented",
        r"\dim X \ge {k}",
    ),
    "measure": (
        "probability space",
        "\\Omega",
        ["A", "B", "E"],
        "event",
        "measurable",
        r"\mathbb{{P}}(A) > 1/{k}",
    ),
}
PROOF_STEPS = [
    "By Lemma~\\ref{{lem:{label}}}, we may assume that ${a}$ is {prop}.",
    "Suppose, for contradiction, that ${a} \\neq {b}$.",
    "It follows from \\eqref{{eq:{label}}} that",
    "Applying the triangle inequality and the bound above, we obtain",
    "Since ${a}$ is {prop}, the map $\\phi\\colon {a} \\to {b}$ is injective, hence",
    "Taking the limit as $n \\to \\infty$ on both sides gives",
    "We argue by induction on ${i}$; the case ${i} = {k}$ is immediate.",
    "Combining the two estimates, we conclude that",
    "Let $\\varepsilon > 0$ and choose ${i}_0$ such that",
    "A direct computation shows that",
]
MATH_WORDS = ["regular", "bounded", "finite", "compact", "abelian", "nontrivial", "minimal"]


class MathWriter:
    """LaTeX in the shape of arXiv math: sections, theorem environments, display equations."""

    def __init__(self, rand: Rand) -> None:
        self.r = rand

    def expr(self, depth: int = 0) -> str:
        """A random but well-formed LaTeX expression."""
        r = self.r
        i, x = r.pick("ijkmn"), r.pick("xyzabt")
        atoms = [
            f"{x}_{i}",
            f"{x}^{{{r.between(2, 5)}}}",
            str(r.between(1, 99)),
            f"\\lambda_{{{i}}}",
            f"f({x})",
            f"\\|{x}\\|",
        ]
        if depth > 1 or r.chance(0.3):
            return r.pick(atoms)
        a, b = self.expr(depth + 1), self.expr(depth + 1)
        forms = [
            f"{a} + {b}",
            f"\\frac{{{a}}}{{{b}}}",
            f"\\sum_{{{i}=1}}^{{n}} {a}",
            f"\\int_0^{{{r.between(1, 9)}}} {a} \\, d{x}",
            f"\\left( {a} \\right)^{{{r.between(2, 4)}}}",
            f"{a} \\cdot {b}",
            f"\\sqrt{{{a}}}",
            f"\\log\\left(1 + {a}\\right)",
        ]
        return r.pick(forms)

    def display(self) -> str:
        rel = self.r.pick(["=", "\\le", "\\ge", "<", "\\leq C"])
        label = f"eq:{self.r.pick(MATH_WORDS)}{self.r.between(1, 9)}"
        return (
            f"\\begin{{equation}}\\label{{{label}}}\n  {self.expr()} {rel} {self.expr()}\n"
            "\\end{equation}"
        )

    def statement(self, area: tuple) -> str:
        r = self.r
        obj, sym, subs, part, prop, cond = area
        a = r.pick(subs)
        cond = cond.format(n=r.between(2, 500), k=r.between(2, 12))
        rel = r.pick(["=", "<", "\\le"])
        return fix_articles(
            f"Let ${sym}$ be a {obj} with ${cond}$, and let ${a} \\subseteq {sym}$ be a "
            f"{r.pick(MATH_WORDS)} {part}. Then ${a}$ is {prop} if and only if "
            f"${self.expr()} {rel} {self.expr()}$ for every ${r.pick('ijk')}"
            f" \\le {r.between(2, 20)}$."
        )

    def proof(self, area: tuple) -> str:
        r = self.r
        subs = area[2]
        lines = []
        for _ in range(r.between(3, 7)):
            step = r.pick(PROOF_STEPS).format(
                label=f"{r.pick(MATH_WORDS)}{r.between(1, 9)}",
                a=r.pick(subs),
                b=r.pick(subs),
                prop=r.pick(MATH_WORDS),
                i=r.pick("ijkmn"),
                k=r.between(0, 2),
            )
            lines.append(step)
            if step.endswith(("that", "obtain", "gives", "hence", "conclude that")):
                lines.append(self.display())
        return "\\begin{proof}\n" + "\n".join(lines) + "\nThis completes the proof.\n\\end{proof}"

    def env(self, name: str, label: str, body: str) -> str:
        return f"\\begin{{{name}}}\\label{{{label}}}\n{body}\n\\end{{{name}}}"

    def paper(self) -> str:
        """A LaTeX paper body: introduction, notation, lemmas and a theorem with proofs,
        acknowledgements and a short bibliography."""
        r = self.r
        area = AREAS[r.pick(sorted(AREAS))]
        obj, sym, subs, part = area[:4]
        authors = [r.pick(NAMES) for _ in range(4)]
        year = r.between(1960, 2021)
        parts = [
            "\\section{Introduction}",
            f"The study of {plural(obj)} with {r.pick(MATH_WORDS)} {plural(part)} goes back "
            f"to the work of {authors[0]} and {authors[1]}~\\cite{{{authors[0].lower()}{year}}}."
            f" In this note we give a short proof of a bound that was previously known only "
            f"for ${sym}$ of small size, and we show that the constant cannot be improved. "
            f"Our main result is Theorem~\\ref{{thm:main}} below; its proof occupies "
            f"Section~\\ref{{sec:proof}}.",
            "\\section{Preliminaries}\\label{sec:prelim}",
            f"Throughout, ${sym}$ denotes a {obj} and ${r.pick(subs)}$ a {part} of ${sym}$. We "
            f"write $C$ for a constant that may change from line to line, and "
            f"${self.expr()} \\lesssim {self.expr()}$ when the ratio is bounded by $C$.",
        ]
        for n in range(r.between(1, 3)):
            kind = r.pick(["lemma", "proposition", "corollary", "definition"])
            parts.append(self.env(kind, f"lem:{r.pick(MATH_WORDS)}{n}", self.statement(area)))
            if kind != "definition":
                parts.append(self.proof(area))
            if r.chance(0.4):
                parts.append(
                    f"\\begin{{remark}}\nThe hypothesis that ${r.pick(subs)}$ is "
                    f"{r.pick(MATH_WORDS)} cannot be dropped: for $n = {r.between(2, 9)}$ the "
                    f"estimate fails, as the example of {authors[2]} shows.\n\\end{{remark}}"
                )
        parts += [
            "\\section{Proof of the main result}\\label{sec:proof}",
            self.env("theorem", "thm:main", self.statement(area)),
            self.proof(area),
            "\\section*{Acknowledgements}",
            f"We thank {authors[3]} for helpful comments on an earlier draft.",
            "\\begin{thebibliography}{9}\n"
            f"\\bibitem{{{authors[0].lower()}{year}}} {authors[0][0]}. {authors[0]}, "
            f"\\emph{{On {r.pick(MATH_WORDS)} {plural(part)}}}, J. Algebra "
            f"\\textbf{{{r.between(10, 400)}}} ({year}), "
            f"{r.between(1, 300)}--{r.between(301, 600)}.\n"
            "\\end{thebibliography}",
        ]
        return fix_articles("\n\n".join(parts))


LEAN_TYPES = ["ℕ", "ℤ", "ℚ", "ℝ"]
LEAN_LEMMAS = [
    ("{a} + {b} = {b} + {a}", ["ring", "omega", "exact add_comm {a} {b}", "simp [add_comm]"]),
    ("{a} * ({b} + {c}) = {a} * {b} + {a} * {c}", ["ring", "rw [mul_add]"]),
    ("0 ≤ {a} ^ 2 + {b} ^ 2", ["positivity", "nlinarith [sq_nonneg {a}, sq_nonneg {b}]"]),
    ("{a} ≤ {b} → {a} + {c} ≤ {b} + {c}", ["intro h\n  linarith", "intro h\n  omega"]),
    ("2 * {a} * {b} ≤ {a} ^ 2 + {b} ^ 2", ["nlinarith [sq_nonneg ({a} - {b})]"]),
    ("({a} + {b}) ^ 2 = {a} ^ 2 + 2 * {a} * {b} + {b} ^ 2", ["ring"]),
    ("{a} * {b} = {b} * {a}", ["exact mul_comm {a} {b}", "ring"]),
    ("{a} - {a} = 0", ["simp", "exact sub_self {a}"]),
]
LEAN_NAMESPACES = ["Nat", "Int", "Real", "Finset", "Polynomial", "MeasureTheory", "SPT"]


class LeanWriter:
    """Lean 4 / Mathlib files: imports, a module docstring, a namespace of small lemmas."""

    def __init__(self, rand: Rand) -> None:
        self.r = rand

    def theorem(self) -> str:
        r = self.r
        a, b, c = r.pick(["a", "x", "m"]), r.pick(["b", "y", "n"]), r.pick(["c", "z", "k"])
        stmt, proofs = r.pick(LEAN_LEMMAS)
        typ = r.pick(LEAN_TYPES)
        name = "_".join(
            [
                r.pick(["add", "mul", "sq", "sub", "two_mul"]),
                r.pick(["comm", "le", "nonneg", "self", "distrib", "expand"]),
            ]
            + ([r.pick(["of_le", "left", "right", "aux", "iff"])] if r.chance(0.6) else [])
        ) + ("'" if r.chance(0.2) else "")
        proof = r.pick(proofs).format(a=a, b=b, c=c)
        if r.chance(0.3):
            proof = f"have h{r.between(0, 9)} : (0 : {typ}) ≤ 1 := by norm_num\n  " + proof
        doc = f"/-- {r.pick(['A', 'The'])} {r.pick(MATH_WORDS)} identity used in "
        doc += f"`{r.pick(LEAN_NAMESPACES)}.{name}_aux`. -/\n"
        kw = r.pick(["theorem", "theorem", "lemma"])
        return (
            f"{doc}{kw} {name} ({a} {b} {c} : {typ}) :\n    {stmt.format(a=a, b=b, c=c)} := by\n"
            f"  {proof}"
        )

    def file(self) -> tuple[str, str]:
        """(path, source) of one Lean 4 file."""
        r = self.r
        area = r.pick(
            [
                "Algebra.Order.Ring",
                "Analysis.SpecialFunctions",
                "Data.Nat.Parity",
                "NumberTheory.Divisors",
                "Algebra.GroupPower.Basic",
            ]
        )
        ns = r.pick(LEAN_NAMESPACES)
        imports = "\n".join(
            f"import Mathlib.{area}.{m}"
            for m in sorted(
                {r.pick(["Basic", "Lemmas", "Defs", "Order"]) for _ in range(r.between(1, 3))}
            )
        )
        body = "\n\n".join(self.theorem() for _ in range(r.between(2, 6)))
        text = (
            f"{imports}\n\n/-!\n# {r.pick(MATH_WORDS).capitalize()} lemmas\n\n"
            f"Small facts about `{ns}` used by the tactic library.\n-/\n\n"
            f"open {ns}\n\nnamespace {ns}\n\n{body}\n\nend {ns}\n"
        )
        return f"Mathlib/{area.replace('.', '/')}/{ns}{r.between(1, 99)}.lean", text


def math_web_page(r: Rand, math: MathWriter) -> str:
    """An open-web-math style Q&A page: a question with formulas and worked answers."""
    q = f"# How do I show that ${math.expr()} \\le {math.expr()}$?"
    parts = [
        q,
        f"I tried {r.pick(['induction', 'substitution', 'Cauchy-Schwarz', 'AM-GM'])} "
        f"but got stuck at ${math.expr()}$. Any hints?",
    ]
    for _ in range(r.between(1, 3)):
        steps = " ".join(
            f"Note that $$ {math.expr()} = {math.expr()} $$ so the claim follows "
            f"for $n \\ge {r.between(1, 9)}$."
            for _ in range(r.between(1, 3))
        )
        parts.append(f"**Answer** ({r.between(0, 60)} votes)\n\n{steps}")
    return "\n\n".join(parts)


def arxiv_id(r: Rand) -> str:
    return f"{r.between(15, 23)}{r.between(1, 12):02d}.{r.between(0, 19999):05d}"


def proofpile_records(r: Rand, n: int) -> Iterator[dict]:
    """`meta` as the raw files hold it (an object; the dataset's loading script re-encodes it
    as a JSON string): arXiv rows `{"config": "arxiv", "file": ...}`, formal-library rows
    `{"subset_name": "curated", "file": "formal/lean/..."}` (keys from the proof-pile build
    scripts; see README "Real datasets")."""
    math, lean = MathWriter(r), LeanWriter(r)
    for _ in range(n):
        if r.chance(0.65):
            meta = {"config": "arxiv", "file": f"{arxiv_id(r)}/v{r.between(1, 4)} arxiv/main.tex"}
            text = math.paper()
        else:
            path, text = lean.file()
            meta = {"subset_name": "curated", "file": f"formal/lean/mathlib/{path}"}
        yield {"text": text, "meta": meta}


def pp2_arxiv(r: Rand, n: int) -> Iterator[dict]:
    math = MathWriter(r)
    for _ in range(n):
        aid = arxiv_id(r)
        yield {
            "text": math.paper(),
            "meta": {
                "timestamp": f"20{aid[:2]}-{aid[2:4]}-{r.between(1, 28):02d}T"
                f"{r.between(0, 23):02d}:{r.between(0, 59):02d}:00",
                "yymm": aid[:4],
                "arxiv_id": aid,
                "language": "en",
                "url": f"https://arxiv.org/abs/{aid}",
            },
        }


def pp2_lean(r: Rand, n: int) -> Iterator[dict]:
    lean = LeanWriter(r)
    for _ in range(n):
        path, text = lean.file()
        yield {
            "text": text,
            "meta": {
                "max_stars_repo_path": path,
                "max_stars_repo_name": "leanprover-community/mathlib4",
                "max_stars_count": r.between(100, 2000),
                "id": r.hex(40),
            },
        }


def pp2_python(r: Rand, n: int) -> Iterator[dict]:
    """Small numerical Python files, for AlgebraicStack's many non-Lean languages."""
    for _ in range(n):
        name = r.pick(["simpson", "newton", "bisect", "horner", "euler_step", "power_sum"])
        k = r.between(2, 9)
        text = (
            f'"""{name.replace("_", " ").capitalize()} for the exercises of chapter {k}."""\n\n'
            f"import math\n\n\ndef {name}(f, a, b, n={k * 10}):\n"
            f"    h = (b - a) / n\n    total = f(a) + f(b)\n"
            f"    for i in range(1, n):\n        total += {r.between(2, 4)} * f(a + i * h)\n"
            f"    return total * h / {r.between(2, 6)}\n\n\n"
            f"if __name__ == '__main__':\n    print({name}(math.sin, 0, math.pi))\n"
        )
        yield {
            "text": text,
            "meta": {
                "max_stars_repo_path": f"numerics/{name}.py",
                "max_stars_repo_name": f"{r.pick(SYLLABLES)}{r.pick(SYLLABLES)}/numerics",
                "max_stars_count": r.between(1, 300),
                "id": r.hex(40),
            },
        }


def pp2_web(r: Rand, n: int) -> Iterator[dict]:
    math = MathWriter(r)
    for _ in range(n):
        yield {
            "text": math_web_page(r, math),
            "meta": {
                "url": f"https://math.stackexchange.com/questions/{r.between(100000, 4900000)}",
                "date": f"20{r.between(13, 23)}-{r.between(1, 12):02d}-{r.between(1, 28):02d}",
                "math_score": round(r.uniform(0.2, 1.0), 4),
            },
        }


# --------------------------------------------------------------------------------------------
# Music: ABC tunes (plain and in MusicPile's chat form), **kern scores, and non-music rows.

METERS = {
    "reel": ("4/4", 8),
    "jig": ("6/8", 6),
    "hornpipe": ("4/4", 8),
    "waltz": ("3/4", 6),
    "slip jig": ("9/8", 9),
    "polka": ("2/4", 4),
}
KEYS = {
    "D": "DEFGABcdefg",
    "G": "GABcdefgab",
    "A": "ABcdefgab",
    "Ador": "ABcdefgab",
    "Emin": "EFGABcdefg",
    "C": "CDEFGABcde",
    "Amin": "ABcdefgab",
}
TUNE_WORDS = (
    "Humours Lark Road Piper Sally Gardens Widow Harvest Mill Ferry Kitty Rambler "
    "Hills Boatman Fiddler Morning Star Lough Bridge Maid"
).split()
PLACES = "Ballyloughlin Tulla Kilfenora Sligo Ennis Donegal Dingle Galway Kerry Tyrone".split()


def abc_tune(r: Rand, x: int, rhythm: str) -> str:
    """A two-part tune: a stepwise random walk over the key's scale, each part ending on the
    tonic, with the occasional chord symbol and roll, as in session tune books."""
    meter, units = METERS[rhythm]
    key = r.pick(sorted(KEYS))
    scale = KEYS[key]
    title = r.pick(
        [
            f"The {r.pick(TUNE_WORDS)} of {r.pick(PLACES)}",
            f"{r.pick(NAMES)}'s {rhythm.title()}",
            f"The Road to {r.pick(PLACES)}",
            f"The {r.pick(TUNE_WORDS)} {r.pick(TUNE_WORDS)}",
        ]
    )
    top = len(scale) - 1
    pos = r.between(0, top)

    def bar(last: bool) -> str:
        nonlocal pos
        out, left = [], units
        while left:
            d = min(left, r.pick([1, 1, 1, 2, 2, 3]) if rhythm != "polka" else r.pick([1, 2]))
            pos += r.pick([-2, -1, -1, -1, 1, 1, 1, 2, 0, 3, -3])
            pos = abs(pos) if pos < 0 else (2 * top - pos if pos > top else pos)
            if last and d == left:
                pos = 0 if pos < top // 2 else 7
            note = scale[pos] + ("" if d == 1 else str(d))
            out.append("~" + note if r.chance(0.05) else note)
            left -= d
        chord = f'"{r.pick(["D", "G", "A", "Em", "Bm", "C"])}"' if r.chance(0.25) else ""
        return chord + "".join(out)

    def part() -> str:
        bars = [bar(last=i == 7) for i in range(8)]
        return "|:" + "|".join(bars[:4]) + "|\n" + "|".join(bars[4:]) + ":|"

    return f"X:{x}\nT:{title}\nR:{rhythm}\nM:{meter}\nL:1/8\nK:{key}\n{part()}\n{part()}"


def kern_score(r: Rand) -> str:
    """Two **kern spines, one event per line, barlines as `=N`."""
    notes = ["c", "d", "e", "f", "g", "a", "b", "cc", "dd", "ee"]
    bass = ["C", "D", "E", "F", "G", "A", "B", "CC", "GG"]
    lines = [
        "!!!COM: " + r.pick(NAMES) + " " + r.pick(TUNE_WORDS),
        "**kern\t**kern",
        "*clefF4\t*clefG2",
        f"*k[{r.pick(['', 'f#', 'f#c#', 'b-'])}]\t*k[]",
        "*M3/4\t*M3/4",
    ]
    for m in range(1, r.between(6, 16)):
        lines.append(f"={m}\t={m}")
        for _ in range(3):
            lines.append(f"4{r.pick(bass)}\t4{r.pick(notes)}")
    lines += ["==\t==", "*-\t*-"]
    return "\n".join(lines)


def gsm8k_item(r: Rand) -> str:
    name, item = r.pick(NAMES), r.pick(["apples", "stickers", "marbles", "books", "cupcakes"])
    a, b = r.between(2, 12), r.between(3, 24)
    total = a * b
    c = r.between(1, total - 1)
    left = total - c
    return (
        f"Question: {name} buys {a} boxes of {item} with {b} {item} in each box. "
        f"{name} gives {c} {item} to a friend. How many {item} does {name} have left?\n"
        f"Answer: {name} has {a} * {b} = <<{a}*{b}={total}>>{total} {item}.\n"
        f"After giving {c} away, {name} has {total} - {c} = <<{total}-{c}={left}>>{left} "
        f"{item}.\n#### {left}"
    )


def musicpile_rows(r: Rand, n: int, first_id: int = 0) -> Iterator[dict]:
    """Rows `id` (int64), `text`, `src` as MusicPile's card lists them. The real `src` values
    are not documented, so the sample's are marked as made up (`synthetic:abc`, ...): do not
    write a --where from them; run `mixer peek ROOT --field src` on a real shard."""
    web = WebWriter(r)
    for i in range(n):
        src = r.pick(MUSIC_SOURCES) if r.chance(0.65) else r.pick(OTHER_SOURCES)
        if src == "abc":
            rhythm = r.pick(sorted(METERS))
            text = (
                f"Human: Compose a {rhythm} in the style of traditional Irish music. </s> "
                f"Assistant: {abc_tune(r, r.between(1, 999), rhythm)} </s>"
            )
        elif src == "irishman":
            text = abc_tune(r, 1, r.pick(sorted(METERS)))
        elif src == "kern":
            text = kern_score(r)
        elif src == "gsm8k":
            text = gsm8k_item(r)
        else:
            topic = TOPICS[r.pick(sorted(TOPICS))]
            ask = web.fill("Give three tips for a {thing} involving a {noun}.", topic)
            answer = "\n".join(f"{k}. {web.fill(r.pick(SENTENCES), topic)}" for k in (1, 2, 3))
            if src == "alpaca":
                text = (
                    "Below is an instruction that describes a task. Write a response that "
                    f"appropriately completes the request.\n\n### Instruction:\n{ask}\n\n"
                    f"### Response:\n{answer}"
                )
            else:
                text = f"Human: {ask} </s> Assistant: {answer} </s>"
        yield {"id": first_id + i, "text": text, "src": f"{SRC_PREFIX}{src}"}


# --------------------------------------------------------------------------------------------
# Chemistry: real molecules (name, SMILES, formula, g/mol) and templated reactions.

MOLECULES = [
    ("ethanol", "CCO", "C2H6O", 46.07),
    ("acetic acid", "CC(=O)O", "C2H4O2", 60.05),
    ("acetone", "CC(=O)C", "C3H6O", 58.08),
    ("benzene", "c1ccccc1", "C6H6", 78.11),
    ("toluene", "Cc1ccccc1", "C7H8", 92.14),
    ("phenol", "Oc1ccccc1", "C6H6O", 94.11),
    ("aniline", "Nc1ccccc1", "C6H7N", 93.13),
    ("benzoic acid", "OC(=O)c1ccccc1", "C7H6O2", 122.12),
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O", "C9H8O4", 180.16),
    ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "C8H10N4O2", 194.19),
    ("paracetamol", "CC(=O)Nc1ccc(O)cc1", "C8H9NO2", 151.16),
    ("ibuprofen", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "C13H18O2", 206.28),
    ("pyridine", "c1ccncc1", "C5H5N", 79.10),
    ("cyclohexane", "C1CCCCC1", "C6H12", 84.16),
    ("ethyl acetate", "CCOC(C)=O", "C4H8O2", 88.11),
    ("acetonitrile", "CC#N", "C2H3N", 41.05),
    ("naphthalene", "c1ccc2ccccc2c1", "C10H8", 128.17),
    ("nicotine", "CN1CCC[C@H]1c1cccnc1", "C10H14N2", 162.23),
    ("benzaldehyde", "O=Cc1ccccc1", "C7H6O", 106.12),
    ("urea", "NC(N)=O", "CH4N2O", 60.06),
    ("glycine", "NCC(=O)O", "C2H5NO2", 75.07),
    ("styrene", "C=Cc1ccccc1", "C8H8", 104.15),
    ("salicylic acid", "OC(=O)c1ccccc1O", "C7H6O3", 138.12),
    ("triethylamine", "CCN(CC)CC", "C6H15N", 101.19),
    ("morpholine", "C1COCCN1", "C4H9NO", 87.12),
    ("citric acid", "OC(=O)CC(O)(CC(=O)O)C(=O)O", "C6H8O7", 192.12),
    ("dopamine", "NCCc1ccc(O)c(O)c1", "C8H11NO2", 153.18),
    ("serotonin", "NCCc1c[nH]c2ccc(O)cc12", "C10H12N2O", 176.22),
    ("lactic acid", "CC(O)C(=O)O", "C3H6O3", 90.08),
    ("nitrobenzene", "O=[N+]([O-])c1ccccc1", "C6H5NO2", 123.11),
]
SOLVENTS = ["THF", "DMF", "toluene", "dichloromethane", "1,4-dioxane", "ethanol", "MeCN"]
# para-substituents written as SMILES prefixes: R + "c1ccc(Br)cc1" is a valid aryl bromide.
SUBSTITUENTS = {
    "methyl": "C",
    "methoxy": "CO",
    "fluoro": "F",
    "chloro": "Cl",
    "trifluoromethyl": "FC(F)(F)",
    "cyano": "N#C",
    "acetyl": "CC(=O)",
    "nitro": "O=[N+]([O-])",
}
ACYLS = {"acetic": "CC(=O)", "benzoic": "O=C(c1ccccc1)", "propanoic": "CCC(=O)"}
ALKYLS = {"methyl": "C", "ethyl": "CC", "propyl": "CCC", "isopropyl": "C(C)C"}


def unsaturation(formula: str) -> float:
    """Degrees of unsaturation from a formula: (2C + 2 + N - H - X) / 2."""
    counts = {el: int(n or 1) for el, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula)}
    halogens = sum(counts.get(x, 0) for x in ("F", "Cl", "Br", "I"))
    return (2 * counts.get("C", 0) + 2 + counts.get("N", 0) - counts.get("H", 0) - halogens) / 2


def suzuki(r: Rand) -> str:
    name, sub = r.pick(sorted(SUBSTITUENTS.items()))
    mmol = r.between(5, 50) / 10
    return (
        f"To a solution of 1-bromo-4-{name}benzene ({sub}c1ccc(Br)cc1, {mmol:.1f} mmol) and "
        f"phenylboronic acid (OB(O)c1ccccc1, {mmol * 1.2:.2f} mmol) in {r.pick(SOLVENTS)} "
        f"({r.between(5, 40)} mL) was added Pd(PPh3)4 ({r.between(2, 10)} mol%) and K2CO3 "
        f"({mmol * 2:.1f} mmol). The mixture was stirred at {r.between(60, 110)} °C for "
        f"{r.between(2, 24)} h under argon, cooled, and extracted with ethyl acetate. Column "
        f"chromatography gave 4-{name}biphenyl ({sub}c1ccc(-c2ccccc2)cc1) as a "
        f"{r.pick(['white solid', 'colourless oil', 'pale yellow solid'])} "
        f"({r.between(45, 97)}% yield)."
    )


def esterification(r: Rand) -> str:
    acid, acyl = r.pick(sorted(ACYLS.items()))
    alkyl, chain = r.pick(sorted(ALKYLS.items()))
    return (
        f"{acid.capitalize()} acid ({acyl}O) was heated under reflux with {alkyl} alcohol "
        f"(O{chain}) and a catalytic amount of sulfuric acid for {r.between(1, 8)} h. Fischer "
        f"esterification gives the {alkyl} ester {acyl}O{chain}; the water formed is removed "
        f"to shift the equilibrium. Reaction SMILES: {acyl}O.O{chain}>>{acyl}O{chain}.O"
    )


def chem_paper(r: Rand) -> str:
    mols = [r.pick(MOLECULES) for _ in range(3)]
    intro = (
        f"Abstract. We report a {r.pick(['scalable', 'mild', 'green', 'one-pot'])} route to "
        f"substituted biaryls and esters. The scope includes {mols[0][0]} ({mols[0][1]}) and "
        f"{mols[1][0]} ({mols[1][1]}) derivatives, and {mols[2][0]} ({mols[2][1]}) was used as "
        f"a reference compound. Yields ranged from {r.between(30, 60)}% to {r.between(61, 98)}%."
    )
    body = [suzuki(r) if r.chance(0.6) else esterification(r) for _ in range(r.between(2, 5))]
    return "\n\n".join([intro, "Experimental section.", *body])


def chem_reasoning(r: Rand) -> str:
    """Worked calculations whose numbers are right: moles, unsaturation, dilution."""
    name, smiles, formula, mw = r.pick(MOLECULES)
    if r.chance(0.35):
        c1, v2 = r.between(5, 60) / 10, r.between(50, 500)
        c2 = c1 / r.pick([2, 4, 5, 10, 20])
        v1 = c2 * v2 / c1
        return (
            f"Question: A stock solution of {name} ({smiles}) is {c1:.1f} M. What volume of "
            f"stock is needed to prepare {v2} mL of a {c2:.3g} M solution?\nReasoning: Moles "
            f"are conserved on dilution, so C1 V1 = C2 V2 and V1 = C2 V2 / C1 = {c2:.3g} x "
            f"{v2} / {c1:.1f} = {v1:.4g} mL. Dilute this volume to {v2} mL with solvent.\n"
            f"Answer: {v1:.4g} mL of stock."
        )
    grams = r.between(50, 2000) / 100
    dou = unsaturation(formula)
    return (
        f"Question: How many moles are in {grams:.2f} g of {name} ({smiles}), and how many "
        f"degrees of unsaturation does it have?\nReasoning: The molecular formula of {name} is "
        f"{formula}, so its molar mass is {mw:.2f} g/mol. Moles = mass / molar mass = "
        f"{grams:.2f} / {mw:.2f} = {grams / mw:.4f} mol. Degrees of unsaturation = "
        f"(2C + 2 + N - H - X) / 2 = {dou:g}, counting rings and pi bonds.\n"
        f"Answer: {grams / mw:.4f} mol; {dou:g} degrees of unsaturation."
    )


def chem_education(r: Rand) -> str:
    group, example = r.pick(
        [
            ("carboxylic acids", "acetic acid"),
            ("aromatic rings", "benzene"),
            ("amines", "aniline"),
            ("alcohols", "ethanol"),
            ("ketones", "acetone"),
        ]
    )
    mol = next(m for m in MOLECULES if m[0] == example)
    other, quiz = r.pick(MOLECULES), r.pick(MOLECULES)
    return (
        f"Functional groups: {group}.\n\nIn SMILES notation, {example} is written {mol[1]}. "
        f"Patterns like this one recur in larger molecules; for example {other[0]} "
        f"({other[1]}, {other[2]}) has a molar mass of {other[3]:.2f} g/mol. Lowercase letters "
        f"in SMILES mark aromatic atoms, digits open and close rings, and parentheses hold "
        f"branches.\n\nExercise: write the SMILES for {quiz[0]} ({quiz[2]}) before checking "
        f"the answer.\nAnswer: {quiz[1]}"
    )


CHEMPILE: dict[str, tuple[str, Callable[[Rand], str], int]] = {
    # dataset (jablonkagroup/chempile-*): (one of its configs, text maker, training rows)
    "chempile-education": ("LibreText_Chemistry-default", chem_education, 600),
    "chempile-reasoning": ("chemistry_stackexchange-raw_data", chem_reasoning, 600),
    "chempile-paper": ("chemrxiv_processed-default", chem_paper, 400),
}


def chempile_rows(r: Rand, dataset: str, n: int, split: str) -> list[dict]:
    """Rows of one ChemPile config: `text` in every dataset; chempile-reasoning's stackexchange
    configs also hold `title`, `q`, `a` and `split` (the columns code that reads them uses)."""
    config, make_text, _ = CHEMPILE[dataset]
    rows = []
    for i in range(n):
        text = make_text(r)
        row: dict = {"text": text}
        if dataset == "chempile-reasoning":
            q, _, a = text.partition("\nReasoning: ")
            row = {
                "title": q.removeprefix("Question: ")[:80],
                "q": q.removeprefix("Question: "),
                "a": a,
                "split": split,
                "text": text,
                "__index_level_0__": i,
            }
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Writers: deterministic bytes for each container format.


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode()


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(jsonl_bytes(records))
    path.write_bytes(buf.getvalue())


def write_jsonl_zst(path: Path, records: list[dict], frames: int) -> None:
    """Concatenated zstd frames, one per slice of records, as streaming dumps are written."""
    cctx = zstandard.ZstdCompressor(level=10)
    step = -(-len(records) // frames)
    path.write_bytes(
        b"".join(
            cctx.compress(jsonl_bytes(records[i : i + step])) for i in range(0, len(records), step)
        )
    )


def write_parquet(path: Path, rows: list[dict], row_group_rows: int, compression: str) -> None:
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path, row_group_size=row_group_rows, compression=compression)


def parquet_name(split: str, i: int, parts: int, tag: str = "") -> str:
    """`train-00000-of-00002.parquet`, or with the hash suffix some Hub uploads carry."""
    suffix = f"-{hashlib.sha256(tag.encode()).hexdigest()[:16]}" if tag else ""
    return f"{split}-{i:05d}-of-{parts:05d}{suffix}.parquet"


def generate(out: Path, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """Write every sample corpus under `out`; returns the files written, in a fixed order.

    Each corpus sits in its own folder laid out as the dataset downloads whole, held-out splits
    and samples included (small), so recipes select files the way they must on the real thing.
    """

    def n(count: int) -> int:
        return max(2, round(count * scale))

    def rows(label: str, make: Callable[[Rand, int], Iterator[dict]], count: int) -> list[dict]:
        return list(make(Rand(seed, label), n(count)))

    files: list[Path] = []

    def place(rel: str) -> Path:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        files.append(path)
        return path

    # hoskinson-center/proof-pile: train/ (21 shards in the real set), dev/, test/
    for i in range(2):
        records = rows(f"proofpile{i}", proofpile_records, 260)
        write_jsonl_gz(place(f"proofpile/train/proofpile_train_{i}.jsonl.gz"), records)
    for split in ("dev", "test"):
        records = rows(f"proofpile-{split}", proofpile_records, 20)
        write_jsonl_gz(place(f"proofpile/{split}/proofpile_{split}.jsonl.gz"), records)
    # EleutherAI/proof-pile-2: SUBSET/{train,validation,test}/, files flat inside
    for rel, make, count in [
        ("arxiv/train/arXiv_000.jsonl.zst", pp2_arxiv, 240),
        ("algebraic-stack/train/github-lean-train-0000.jsonl.zst", pp2_lean, 200),
        ("open-web-math/train/shard-0000.jsonl.zst", pp2_web, 240),
        ("algebraic-stack/train/python0000.jsonl.zst", pp2_python, 60),
        ("arxiv/validation/arXiv_000.jsonl.zst", pp2_arxiv, 10),
        ("arxiv/test/arXiv_000.jsonl.zst", pp2_arxiv, 10),
        ("algebraic-stack/validation/github-lean-validation-0000.jsonl.zst", pp2_lean, 10),
        ("algebraic-stack/test/github-lean-test-0000.jsonl.zst", pp2_lean, 10),
        ("open-web-math/validation/val.jsonl.zst", pp2_web, 10),
        ("open-web-math/test/test.jsonl.zst", pp2_web, 10),
    ]:
        write_jsonl_zst(place(f"proof-pile-2/{rel}"), rows(rel, make, count), frames=3)
    # m-a-p/MusicPile: data/train-000NN-of-000MM-<hash>.parquet, no held-out split
    first_id = 0
    for i in range(2):
        music = list(musicpile_rows(Rand(seed, f"musicpile{i}"), n(1000), first_id))
        first_id += len(music)
        name = parquet_name("train", i, 2, f"{seed}/musicpile{i}")
        write_parquet(place(f"musicpile/data/{name}"), music, 200, "snappy")
    # jablonkagroup/chempile-*: one repo per dataset, CONFIG/{train,val,test}-*.parquet
    for dataset, (config, _, count) in CHEMPILE.items():
        parts = 2 if dataset == "chempile-paper" else 1
        for split, total in (("train", n(count)), ("val", n(20)), ("test", n(20))):
            k = parts if split == "train" else 1
            r = Rand(seed, f"{dataset}-{split}")
            chem = chempile_rows(r, dataset, total, split)
            step = -(-len(chem) // k)
            for i in range(k):
                rel = f"chempile/{dataset}/{config}/{parquet_name(split, i, k)}"
                write_parquet(place(rel), chem[i * step : (i + 1) * step], 128, "zstd")
    # HuggingFaceFW/fineweb: data/CC-MAIN-*/, and sample/10BT/ repeating documents of data/
    fineweb: list[dict] = []
    for dump in ("CC-MAIN-2023-50", "CC-MAIN-2024-10"):
        dump_rows = list(fineweb_rows(Rand(seed, dump), dump, n(1500)))
        fineweb += dump_rows
        write_parquet(place(f"fineweb/data/{dump}/000_00000.parquet"), dump_rows, 256, "snappy")
    write_parquet(place("fineweb/sample/10BT/000_00000.parquet"), fineweb[::50], 256, "snappy")
    # mlfoundations/dclm-baseline-1.0: global-shard_NN_of_10/local-shard_N_of_10/*.jsonl.zst
    for i in range(2):
        rel = f"dclm/global-shard_01_of_10/local-shard_0_of_10/shard_{i:08d}_processed.jsonl.zst"
        write_jsonl_zst(place(rel), rows(f"dclm{i}", dclm_records, 1800), frames=1)
    write_checksums(out, files)
    return files


def training_files(files: list[Path], out: Path) -> list[Path]:
    """The files read by default (`mixer.ingest.select`): no held-out split, no sample/."""
    from mixer.ingest.select import held_out_split

    return [p for p in files if held_out_split(p.relative_to(out).as_posix()) is None]


def write_checksums(out: Path, files: list[Path]) -> None:
    """`sha256sum -c`-compatible list, headed by the versions that fix the compressed bytes."""
    lines = [f"# {line}" for line in library_versions()]
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(out).as_posix()}")
    (out / CHECKSUMS).write_text("\n".join(lines) + "\n")


def library_versions() -> list[str]:
    return [
        f"pyarrow {pa.__version__}",
        f"zstandard {zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})",
        f"zlib {zlib.ZLIB_RUNTIME_VERSION}",
    ]


def iter_texts(files: list[Path]) -> Iterator[str]:
    """Every document text of the sample files, in file order."""
    for path in files:
        name = path.name
        if name.endswith(".parquet"):
            yield from pq.read_table(path, columns=["text"]).column("text").to_pylist()
            continue
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        else:
            raw = read_all_frames(raw)
        for line in raw.decode().splitlines():
            yield json.loads(line)["text"]


def read_all_frames(data: bytes) -> bytes:
    """Decompress every concatenated zstd frame (one decompressobj stops after the first)."""
    out = io.BytesIO()
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as f:
        out.write(f.read())
    return out.getvalue()


def train_tokenizer(files: list[Path], out: Path) -> None:
    """GPT-2-style byte-level BPE on the sample texts. The trainer breaks count ties by pair
    order, so the file is the same on every run (checked: repeated runs, 1 or many threads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_texts(files), trainer=trainer)
    tokenizer.save(str(out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply every record count.")
    parser.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer.json")
    parser.add_argument("--no-tokenizer", action="store_true", help="Only write the samples.")
    args = parser.parse_args(argv)
    files = generate(args.out, args.seed, args.scale)
    print(f"wrote {len(files)} files under {args.out}")
    if not args.no_tokenizer:
        train_tokenizer(training_files(files, args.out), args.tokenizer)
        print(f"wrote {args.tokenizer}")


if __name__ == "__main__":
    main()
