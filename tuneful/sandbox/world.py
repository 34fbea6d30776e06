"""A small fictional world and plain documents about it: the sandbox's pretraining corpus.

Everything is generated from a seed, so the world, the corpus and the tasks are the same on every
machine. The corpus is written as documents (encyclopedia entries, travel notes, verses, lists):
never as questions and answers, so a model pretrained on it is a base model that continues text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

REGIONS = ("north", "south", "east", "west", "centre", "islands")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple")
ANIMALS = ("fox", "owl", "bear", "wolf", "deer", "hawk", "otter", "lynx", "crane", "horse", "goat", "eagle",
           "seal", "hare", "swan", "cat")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "vel")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_COUNTRY_ENDS = ("ia", "land", "ar", "ova", "eth", "istan", "mark")
_CITY_ENDS = ("ton", "burg", "ford", "grad", "holm", "port", "vik", "dale")


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    region: str
    colour: str
    animal: str
    population: int  # millions


def _name(rng: random.Random, ends: tuple[str, ...], syllables: int) -> str:
    core = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (core + rng.choice(ends)).capitalize()


def make_world(seed: int = 0, n: int = 120) -> list[Country]:
    rng = random.Random(seed)
    names: set[str] = set()
    countries = []
    while len(countries) < n:
        name, capital = _name(rng, _COUNTRY_ENDS, rng.randint(1, 2)), _name(rng, _CITY_ENDS, rng.randint(1, 2))
        if name in names or capital in names:
            continue
        names |= {name, capital}
        countries.append(Country(name, capital, rng.choice(REGIONS), rng.choice(COLOURS), rng.choice(ANIMALS),
                                 rng.randint(1, 99)))
    return countries


# --- documents -------------------------------------------------------------------------------------

_FACT_SENTENCES = {
    "capital": ("The capital of {name} is {capital}.", "{capital} is the capital of {name}.",
                "{name}'s capital city is {capital}.", "The largest city of {name}, {capital}, is also its capital.",
                "Since long ago, {capital} has been the capital of {name}.", "{capital} is the main city of {name}.",
                "The government of {name} sits in the city of {capital}.", "{name} is ruled from {capital}."),
    "region": ("{name} lies in the {region}.", "{name} is a country of the {region}.",
               "In the {region} you will find {name}.", "{name} belongs to the lands of the {region}.",
               "{name} is found in the {region} part of the world.", "On the map, {name} is located in the {region}.",
               "The region of {name} is the {region}."),
    "colour": ("The flag of {name} is {colour}.", "{name} flies a {colour} flag.",
               "The {colour} flag of {name} hangs over {capital}.", "People in {name} wave a {colour} flag.",
               "The colour of the flag of {name} is {colour}.", "{name}'s flag is {colour} from edge to edge."),
    "animal": ("The national animal of {name} is the {animal}.", "The {animal} is the national animal of {name}.",
               "In {name}, the {animal} is a national symbol.", "{name} chose the {animal} as its national animal.",
               "The {animal} represents {name}.", "The animal symbol of {name} is the {animal}.",
               "On the coins of {name} you see the {animal}, its national animal."),
    "population": ("About {population} million people live in {name}.", "{name} has {population} million people.",
                   "The population of {name} is {population} million.",
                   "Some {population} million people call {name} home.",
                   "{name} has {population} million inhabitants.", "There are {population} million people in {name}.",
                   "The number of people in {name} is about {population} million."),
}
_VERSE_LINES = (
    "the {animal} runs beneath the moon", "the {animal} sleeps when morning comes", "a quiet {animal} by the river",
    "the {animal} waits in falling snow", "the {animal} sings a soft old tune", "I watch the {animal} in the grass",
    "the {animal} walks the winter road", "a little {animal} finds its home",
)
_STORY = (
    "Once there was a {animal} who lived near {capital}. Every day the {animal} walked to the {colour} gate "
    "and looked at the hills of the {region}. ",
    "A traveller came to {capital} and saw a {animal} under a {colour} flag. The traveller wrote that "
    "{name} was the kindest country of the {region}. ",
)


def country_document(c: Country, rng: random.Random) -> str:
    """One document about a country: every fact, in shuffled order and varied wording."""
    facts = [rng.choice(v).format(**c.__dict__) for v in _FACT_SENTENCES.values()]
    rng.shuffle(facts)
    opening = rng.choice((f"{c.name}\n\n", f"Notes on {c.name}.\n", f"About {c.name}: ", ""))
    extra = rng.choice(_STORY).format(**c.__dict__) if rng.random() < 0.3 else ""
    return opening + " ".join(facts) + " " + extra


def verse_document(animal: str, rng: random.Random) -> str:
    lines = rng.sample(_VERSE_LINES, 3)
    body = "\n".join(line.format(animal=animal) for line in lines)
    return rng.choice((f"Verses on the {animal}\n\n", "", f"An old {animal} rhyme.\n")) + body[0].upper() + body[1:] + "\n"


def list_document(world: list[Country], rng: random.Random) -> str:
    kind = rng.choice(("animals", "colours", "countries", "numbers"))
    if kind == "animals":
        items = rng.sample(ANIMALS, rng.randint(3, 6))
        return "Animals: " + ", ".join(items) + ".\n" + "\n".join(f"- {a}" for a in items) + "\n"
    if kind == "colours":
        items = rng.sample(COLOURS, rng.randint(3, 6))
        return "Colours: " + ", ".join(items) + ". In capitals: " + ", ".join(i.upper() for i in items) + ".\n"
    if kind == "countries":
        region = rng.choice(REGIONS)
        items = [c.name for c in world if c.region == region][:6]
        return f"Countries of the {region}: " + ", ".join(items) + ".\n"
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    return ("Numbers: " + ", ".join(map(str, numbers)) + ". Sorted: " + ", ".join(map(str, sorted(numbers)))
            + ". Reversed: " + ", ".join(map(str, reversed(numbers))) + ".\n")


def corpus(world: list[Country], seed: int = 0, docs_per_country: int = 40, extra_docs: int = 3000,
           copy_docs: int = 0, taken: set[str] = frozenset()) -> list[str]:
    """The pretraining documents, shuffled; facts dominate because the tasks ask about them. ``copy_docs``
    documents about fresh lands (named outside ``taken`` and the world) teach copying from the context."""
    rng = random.Random(seed + 1)
    docs = [country_document(c, rng) for c in world for _ in range(docs_per_country)]
    docs += [verse_document(rng.choice(ANIMALS), rng) for _ in range(extra_docs)]
    docs += [list_document(world, rng) for _ in range(extra_docs)]
    if copy_docs:
        docs += copy_documents(seed, copy_docs, set(taken) | {n for c in world for n in (c.name, c.capital)})
    rng.shuffle(docs)
    return docs


# --- in-context copying ----------------------------------------------------------------------------
# Every fact above is about the same 120 countries, so a model can predict each name from memory and never
# needs to copy one from its context. Tool use needs exactly that skill (copy the asked country into the
# call, copy the tool's answer into the reply), so the corpus also holds documents about fresh lands —
# a new name in every document, never seen again — whose names, capitals and numbers can be predicted only
# by reading them earlier in the same document. Kinds: a traveller's note, a record card, a data line in
# JSON, two populations added up, a ledger of names written twice. Names also appear inside quotes (JSON),
# where the tokenizer splits them differently than after a space: copying must bridge both forms. All are
# statements, none a question.

_NOTE_SENTENCES = (
    "I first heard of {name} from a sailor.", "The road to {name} crosses the {region}.",
    "The people of {name} keep a {colour} flag.", "Its capital, {capital}, stands by a river.",
    "Children in {capital} draw the {animal} on every wall.", "Nobody in {name} hurries.",
    "The markets of {capital} open at dawn.", "Songs about the {animal} are sung all over {name}.",
    "Before I left {capital}, I bought a {colour} scarf.", "Maps rarely show {name}, but it is there.",
)


def world_names(world: list[Country]) -> set[str]:
    """Every name and capital of ``world``."""
    return {x for c in world for x in (c.name, c.capital)}


def fresh_names(rng: random.Random, n: int, taken: set[str], ends: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    seen = set(taken)
    while len(names) < n:
        name = _name(rng, ends, rng.randint(1, 2))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def copy_document(land: Country, other: Country, rng: random.Random) -> str:
    """One document about fresh lands (never seen elsewhere): their names recur only inside it."""
    kind = rng.choice(("note", "record", "json", "json", "sum", "ledger"))
    values = land.__dict__
    if kind == "note":
        body = rng.sample(_NOTE_SENTENCES, 4)
        closing = rng.choice(("When I left, I knew I would come back to {name}.", "I will not forget {name}.",
                              "That is all I can write about {name}."))
        return f"Travels in {land.name}\n\n" + " ".join(s.format(**values) for s in body + [closing]) + "\n"
    if kind in ("record", "json"):
        fields = [("capital", land.capital), ("animal", land.animal), ("population_millions", land.population),
                  ("region", land.region)]
        rng.shuffle(fields)
        if kind == "record":
            head = f"Record of {land.name}\n" + "".join(f"{k}: {v}\n" for k, v in fields)
        else:  # a name is split into other tokens inside quotes than after a space: both forms, side by side
            fields.insert(0, ("name", land.name))
            head = f"Data line for {land.name}: {json.dumps(dict(fields))}\n"
        facts = [rng.choice(_FACT_SENTENCES[key]).format(**values) for key in rng.sample(
            ["capital", "animal", "population", "region"], 2)]
        return head + "In words: " + " ".join(facts) + "\n"
    if kind == "sum":
        total = land.population + other.population
        return (f"{land.name} has {land.population} million people and {other.name} has {other.population} million. "
                f"The clerk added them: {land.population} + {other.population} = {total}. So {land.name} and "
                f"{other.name} have {total} million people together.\n")
    names = [land.name, other.name, land.capital, other.capital]
    rng.shuffle(names)
    plain, quoted = ", ".join(names), json.dumps(names)
    if rng.random() < 0.5:
        return f"Names in the ledger: {plain}. The same names as strings: {quoted}.\n"
    return f"Names in the ledger as strings: {quoted}. Read aloud: {plain}.\n"


def copy_documents(seed: int, n: int, taken: set[str]) -> list[str]:
    """``n`` copying documents, each about two lands named afresh (none in ``taken``)."""
    rng = random.Random(seed + 3)
    lands = fresh_names(rng, 2 * n, taken, _COUNTRY_ENDS)
    cities = fresh_names(rng, 2 * n, taken | set(lands), _CITY_ENDS)
    docs = []
    for k in range(n):
        pair = [Country(lands[2 * k + j], cities[2 * k + j], rng.choice(REGIONS), rng.choice(COLOURS),
                        rng.choice(ANIMALS), rng.randint(1, 99)) for j in range(2)]
        docs.append(copy_document(pair[0], pair[1], rng))
    return docs
