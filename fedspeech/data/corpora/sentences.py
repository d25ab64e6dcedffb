"""A seeded template grammar of short read-speech-like English sentences.

The synthetic corpus needs text whose words recur often enough for a small model to learn them
from a few hours of audio, yet sentences varied enough that held-out ones are new word sequences:
a closed vocabulary of about 360 everyday words (verb forms counted apart) in 22 sentence
frames. Every sentence is already in scoring form (lower case, words of a-z and apostrophes,
single spaces), so WER on it is meaningful and the transcript equals its own normalisation.
"""

from __future__ import annotations

import random
import re
from typing import Callable

_Rng = random.Random

NAMES = ("anna", "peter", "maria", "john", "sarah", "thomas", "laura", "daniel", "emma",
         "robert", "helen", "oliver")
RELATIVES = ("mother", "father", "brother", "sister", "uncle", "aunt", "friend", "neighbor")
# (singular, plural)
PEOPLE = (("farmer", "farmers"), ("sailor", "sailors"), ("painter", "painters"),
          ("baker", "bakers"), ("student", "students"), ("driver", "drivers"),
          ("captain", "captains"), ("visitor", "visitors"), ("child", "children"),
          ("woman", "women"))
ANIMALS = (("horse", "horses"), ("rabbit", "rabbits"), ("kitten", "kittens"),
           ("bird", "birds"), ("goat", "goats"), ("fox", "foxes"), ("duck", "ducks"),
           ("dog", "dogs"))
THINGS = (("table", "tables"), ("window", "windows"), ("letter", "letters"),
          ("basket", "baskets"), ("bottle", "bottles"), ("candle", "candles"),
          ("chair", "chairs"), ("blanket", "blankets"), ("kettle", "kettles"),
          ("ladder", "ladders"), ("pencil", "pencils"), ("lamp", "lamps"), ("coat", "coats"),
          ("box", "boxes"), ("key", "keys"), ("book", "books"), ("cup", "cups"),
          ("boat", "boats"), ("ring", "rings"), ("map", "maps"), ("clock", "clocks"),
          ("bucket", "buckets"), ("picture", "pictures"), ("apple", "apples"),
          ("umbrella", "umbrellas"), ("jacket", "jackets"))
PLACES = ("garden", "river", "bridge", "tower", "village", "forest", "meadow", "island",
          "market", "kitchen", "station", "library", "castle", "cottage", "school", "church",
          "valley", "lake", "road", "beach", "harbor", "office")
THING_ADJECTIVES = ("old", "small", "large", "heavy", "green", "yellow", "little", "broken",
                    "empty", "clean", "strange", "golden", "wooden", "silver", "ancient", "red",
                    "blue", "brown", "white", "new")
PLACE_ADJECTIVES = ("old", "small", "large", "quiet", "busy", "dark", "green", "narrow",
                    "ancient", "empty", "little", "famous")
BEING_ADJECTIVES = ("old", "young", "quiet", "busy", "tired", "happy", "careful", "tall",
                    "strange", "famous", "friendly", "little", "brown", "white")
# (base, past, third person singular)
TRANSITIVE = (("carry", "carried", "carries"), ("open", "opened", "opens"),
              ("paint", "painted", "paints"), ("clean", "cleaned", "cleans"),
              ("find", "found", "finds"), ("bring", "brought", "brings"),
              ("watch", "watched", "watches"), ("fix", "fixed", "fixes"),
              ("sell", "sold", "sells"), ("buy", "bought", "buys"), ("move", "moved", "moves"),
              ("hide", "hid", "hides"), ("drop", "dropped", "drops"), ("pull", "pulled", "pulls"),
              ("wash", "washed", "washes"), ("check", "checked", "checks"),
              ("fill", "filled", "fills"), ("keep", "kept", "keeps"), ("take", "took", "takes"),
              ("borrow", "borrowed", "borrows"), ("show", "showed", "shows"))
INTRANSITIVE_PAST = ("walked", "waited", "laughed", "smiled", "slept", "rested", "arrived",
                     "stayed", "sang", "danced", "worked", "stopped", "played", "sat", "ran")
ADVERBS = ("slowly", "quickly", "quietly", "carefully", "happily", "loudly", "together",
           "alone")
PREPOSITIONS = ("near", "behind", "under", "beside", "across", "inside", "along", "around",
                "past", "outside")
STATIC_PREPOSITIONS = ("near", "behind", "under", "beside", "inside", "outside")
TIMES = ("yesterday", "today", "this morning", "last night", "on monday", "on tuesday",
         "on friday", "on sunday", "in the evening", "before dinner", "after lunch", "at noon",
         "in the spring", "during the winter", "last summer", "last week", "early")
HABITS = ("every morning", "every evening", "each week", "after school", "before breakfast",
          "in the afternoon", "twice a day")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "ten", "twelve", "twenty",
           "many", "several", "a few")
WEATHER = ("cold", "warm", "windy", "sunny", "cloudy", "raining", "snowing", "foggy", "dark")
MEALS = ("breakfast", "lunch", "dinner", "supper")
PRONOUNS = ("i", "we", "they", "he", "she", "you")
THIRD_PRONOUNS = ("he", "she")
MODALS = ("should", "must", "will", "can", "could", "might", "would")
NEGATIONS = ("didn't", "couldn't", "won't", "can't", "don't", "wouldn't")
FEELINGS = ("glad", "surprised", "sorry", "sure", "afraid")

QUESTION_WORDS = ("did", "do", "how", "what", "where", "why", "who", "can", "will", "is")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(rng: _Rng, options: tuple) -> str:
    return options[rng.randrange(len(options))]


def _being(rng: _Rng, plural: bool = False) -> str:
    """A person or an animal, often with an adjective."""
    noun = _pick(rng, PEOPLE + ANIMALS)[1 if plural else 0]
    return f"{_pick(rng, BEING_ADJECTIVES)} {noun}" if rng.random() < 0.6 else noun


def _thing(rng: _Rng, plural: bool = False) -> str:
    noun = _pick(rng, THINGS)[1 if plural else 0]
    return f"{_pick(rng, THING_ADJECTIVES)} {noun}" if rng.random() < 0.6 else noun


def _place(rng: _Rng) -> str:
    place = _pick(rng, PLACES)
    return f"the {_pick(rng, PLACE_ADJECTIVES)} {place}" if rng.random() < 0.4 else f"the {place}"


def _subject(rng: _Rng) -> str:
    roll = rng.random()
    if roll < 0.35:
        return _pick(rng, NAMES)
    if roll < 0.55:
        return f"my {_pick(rng, RELATIVES)}"
    return f"the {_being(rng)}"


def _verb(rng: _Rng, form: int) -> str:
    return _pick(rng, TRANSITIVE)[form]


_BASE, _PAST, _THIRD = 0, 1, 2

# Each frame draws its words from the lists above; the sentence is returned without punctuation.
_FRAMES: tuple[Callable[[_Rng], str], ...] = (
    lambda r: f"{_subject(r)} {_verb(r, _PAST)} the {_thing(r)} {_pick(r, PREPOSITIONS)} {_place(r)}",
    lambda r: f"{_pick(r, NAMES)} {_verb(r, _PAST)} {_a(_thing(r))} {_pick(r, TIMES)}",
    lambda r: f"{_pick(r, NAMES)} and {_pick(r, NAMES)} {_pick(r, INTRANSITIVE_PAST)} "
              f"{_pick(r, PREPOSITIONS)} {_place(r)} {_pick(r, TIMES)}",
    lambda r: f"we {_pick(r, MODALS)} {_verb(r, _BASE)} the {_thing(r)} before {_pick(r, MEALS)}",
    lambda r: f"did you see the {_being(r)} {_pick(r, STATIC_PREPOSITIONS)} {_place(r)}",
    lambda r: f"there were {_pick(r, NUMBERS)} {_thing(r, plural=True)} "
              f"{_pick(r, STATIC_PREPOSITIONS)} {_place(r)}",
    lambda r: f"my {_pick(r, RELATIVES)} {_pick(r, INTRANSITIVE_PAST)} {_pick(r, ADVERBS)} "
              f"{_pick(r, TIMES)}",
    lambda r: f"the {_being(r, plural=True)} were {_pick(r, BEING_ADJECTIVES)} and the "
              f"{_thing(r, plural=True)} were {_pick(r, THING_ADJECTIVES)}",
    lambda r: f"{_pick(r, NAMES)} said that the {_thing(r)} was {_pick(r, STATIC_PREPOSITIONS)} "
              f"{_place(r)}",
    lambda r: f"please {_verb(r, _BASE)} the {_thing(r)} and put it {_pick(r, STATIC_PREPOSITIONS)} "
              f"{_place(r)}",
    lambda r: f"{_pick(r, PRONOUNS)} {_pick(r, NEGATIONS)} {_verb(r, _BASE)} the {_thing(r)} "
              f"{_pick(r, TIMES)}",
    lambda r: f"it was {_pick(r, WEATHER)} {_pick(r, TIMES)} so {_pick(r, PRONOUNS)} "
              f"{_pick(r, INTRANSITIVE_PAST)} {_pick(r, STATIC_PREPOSITIONS)} {_place(r)}",
    lambda r: f"the {_being(r)} {_pick(r, INTRANSITIVE_PAST)} {_pick(r, ADVERBS)} "
              f"{_pick(r, PREPOSITIONS)} {_place(r)}",
    lambda r: f"{_pick(r, NAMES)} {_pick(r, ('always', 'often', 'never', 'sometimes'))} "
              f"{_verb(r, _THIRD)} the {_thing(r)} {_pick(r, HABITS)}",
    lambda r: f"how many {_thing(r, plural=True)} did {_pick(r, NAMES)} {_verb(r, _BASE)}",
    lambda r: f"i think the {_thing(r)} is {_pick(r, STATIC_PREPOSITIONS)} {_place(r)}",
    lambda r: f"where did {_pick(r, THIRD_PRONOUNS)} {_verb(r, _BASE)} the {_thing(r)}",
    lambda r: f"{_pick(r, PRONOUNS)} {_pick(r, ('were', 'was'))} {_pick(r, FEELINGS)} that "
              f"{_subject(r)} {_pick(r, INTRANSITIVE_PAST)} {_pick(r, TIMES)}",
    lambda r: f"when {_pick(r, NAMES)} {_pick(r, INTRANSITIVE_PAST)} the "
              f"{_being(r, plural=True)} were {_pick(r, BEING_ADJECTIVES)}",
    lambda r: f"it's {_pick(r, WEATHER)} {_pick(r, ('today', 'tonight', 'again', 'outside'))} "
              f"so we'll {_verb(r, _BASE)} the {_thing(r)} {_pick(r, ('later', 'tomorrow', 'soon'))}",
    lambda r: f"{_subject(r)} {_verb(r, _PAST)} {_pick(r, NUMBERS)} {_thing(r, plural=True)} "
              f"{_pick(r, ADVERBS)}",
    lambda r: f"who {_verb(r, _PAST)} the {_thing(r)} {_pick(r, PREPOSITIONS)} {_place(r)}",
)

_WORD = re.compile(r"^[a-z']+$")


def _fix_grammar(sentence: str) -> str:
    """`i was`/`they was`: the only agreement the frames cannot get right by construction."""
    sentence = re.sub(r"^(we|they|you) was ", r"\1 were ", sentence)
    return re.sub(r"^(i|he|she) were ", r"\1 was ", sentence)


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct sentences in scoring form, the same list for the same seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"sentences-{seed}")
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"the grammar yielded only {len(out)} distinct sentences after "
                             f"{attempts} draws; ask for fewer than {n}")
        sentence = _fix_grammar(" ".join(_pick(rng, _FRAMES)(rng).split()))
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


def spoken_form(sentence: str) -> str:
    """The text handed to the synthesiser: the sentence with final punctuation for intonation."""
    return sentence + ("?" if sentence.split(" ", 1)[0] in QUESTION_WORDS else ".")


def vocabulary() -> set[str]:
    """Every word the grammar can produce."""
    words: set[str] = set()
    tables: list[tuple] = [NAMES, RELATIVES, PLACES, PLACE_ADJECTIVES, THING_ADJECTIVES, BEING_ADJECTIVES,
                           INTRANSITIVE_PAST, ADVERBS, PREPOSITIONS, STATIC_PREPOSITIONS, TIMES,
                           HABITS, NUMBERS, WEATHER, MEALS, PRONOUNS, THIRD_PRONOUNS, MODALS,
                           NEGATIONS, FEELINGS]
    tables += [tuple(w for pair in t for w in pair) for t in (PEOPLE, ANIMALS, THINGS, TRANSITIVE)]
    for table in tables:
        for entry in table:
            words.update(entry.split())
    frame_words = ("a an and the my we you did see there were was is it it's so put please said "
                   "that how many i think where always often never sometimes who when today "
                   "tonight again outside we'll later tomorrow soon before they he she")
    words.update(frame_words.split())
    bad = sorted(w for w in words if not _WORD.match(w))
    if bad:  # a guard for edits to the tables above
        raise AssertionError(f"words outside a-z and apostrophes: {bad}")
    return words
