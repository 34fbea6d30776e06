"""The sandbox agent: what tool use buys a small tuned model, measured where everything is known.

A second world (another seed, names not in the first) holds countries the base model never read about.
Its facts are reachable only through tools: ``lookup_country(name)`` returns a country's facts as
``key: value`` lines (for an unknown name an error and the closest known name), ``add(a, b)`` adds two
numbers (population arithmetic the model cannot do in its head). SFT data holds full traces — the first
lookup saying what it looks up, the call, the tool's result, the answer; optionally a misspelt lookup
recovered from, the slip marked ``weight: 0`` — for training countries (the world's training split and
training-only countries of a third draw, chosen by the piece their name opens with) and training phrasings;
the evaluation asks held-out phrasings about held-out countries and runs the agent loop itself
(model → parse → run the tool → model), base and tuned, and tuned without the tools. The verifier is
a word check on the final answer; a call is valid when it parses, names an offered tool and its
arguments have the declared names and types.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..data.tool_parsers import PARSERS
from ..infer.episodes import Episode, Turn, play_episodes
from .tasks import surface_variation, vary_words
from .world import Country, make_world, world_names


AGENT_WORLD_OFFSET = 7919  # the second world's seed is the base world's + this
TRAIN_SHARE = 0.7
DEMO_TRACES = 1250  # `tuneful demo`'s agent traces (README, The sandbox agent: 900 too few; 2,000 no better; 1,400
# with the announcing first lookups ran past the demo's 15 minutes; 1,500 in session 22: 63.6 % against 69.8 %)
AGENT_COUNTRIES = 3000  # so many that a training trace rarely meets a country twice: names are copied, not learned
# The second world's countries are smaller than the first's: half their population, rounded up (1-50 million
# people, not 1-99), so a sum of two is at most 100. The sandbox tokenizer writes every number up to 100 as one
# piece and a larger one in two (` 10|9`); the 4M model copies a one-piece total from the add result almost always
# (20 of 20 sums with both lookups right, session 22), the second piece of a two-piece total rarely (6 of 27): after
# ` 10` its own guess of the sum, learnt from the pretraining corpus's "X and Y have 158 million people together",
# wins over the copy (103 for 101, 104, 106 and 109). A limit of the toy tokenizer and model, not of tool use.
AGENT_MAX_POPULATION = 50
# Training traces ask about countries chosen by the piece their name opens with, as the tokenizer writes it
# (``OpeningCoverage``: openings sampled with temperature), from the world's training split and training-only
# countries of a third draw. Drawn uniformly from the 2,100 training countries, 46 of the 900 held-out names opened
# with a piece no training lookup copied and about a quarter with one copied under 10 times; the tuned model got the
# opening of the first lookup wrong in 37 of 450 held-out tasks, 34 of them openings of three letters or more
# ("Befoeth" looked up as "Maivoeth"); chosen so, in 5 (session 23, seed 0). Flat over openings (each as often) it
# was 43: the commonest openings, single letters, were then copied rarely, and 28 of those slipped.
COVERAGE_POOL = 20000  # candidates of the third draw (training-only countries)
COVERAGE_ALPHA = 0.5  # an opening's weight: its countries' count to this power (1: uniform over countries)
MAX_ROUNDS = 5  # lookups, a second lookup after a miss, add, the answer: 4; one to spare

TOOLS = [
    {"type": "function", "function": {"name": "lookup_country", "description": "Facts about a country.",
                                      "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                                                     "required": ["name"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                      "parameters": {"type": "object", "properties": {
                                          "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
]

# family → phrasings: training ones first, the last two held out. The training ones put the name after many
# different words (not only "of {name}"): a small model otherwise learns to copy "the word after 'of'" (the
# announcement's "capital of {name}" matching the question's by induction), and a held-out wording with the name
# elsewhere ("What city is {name} governed from?") then got a wrong first piece in 8 of 10 lookups (session 21;
# 8 phrasings with the name after other words raised the right first lookups from 172 to 217 of 300 tasks).
# Two capital phrasings (and a follow-up) ask for the main or chief city without the word "capital" (the corpus
# says "{capital} is the main city of {name}"): while every training capital question said "capital", 4 of 7 seed-0
# demos of sessions 22-23 sent every held-out "What city is {name} governed from?" to population lookups, the others
# none or 4 of 25, a sixth of the agent tasks won or lost by chance (with them: none, seeds 0 and 1). Two sum
# phrasings put the second name after "of" too ("Add the population of {name} to the population of {other}."): after
# the held-out "... of {name} plus that of {other}" 0-32 % of the tasks were answered right before, 19 and 37 % with
# them (seeds 0 and 1): its second lookup is still wrong in most.
# No phrasing opens with a slot (the surface variation may lower-case a first letter).
FACT_PHRASINGS = {
    "capital": ("What is the capital of {name}?", "Which city is the capital of {name}?", "Capital of {name}?",
                "Tell me the capital of {name}.", "Name the capital city of {name}.", "I need the capital of {name}.",
                "About {name}: which city is its capital?", "For {name}, which city is the capital?",
                "Which city does {name} have as its capital?", "I am curious: {name} has which capital city?",
                "Do you know which city {name} calls its capital?", "Quick one on {name}: the capital city?",
                "Help me find the capital city that belongs to {name}.",
                "My question concerns {name}. Which city is its capital?",
                "Which is the main city of {name}?", "Tell me the chief city of {name}.",
                "What city is {name} governed from?", "Where is the capital of {name}?"),
    "animal": ("What is the national animal of {name}?", "Which animal is the symbol of {name}?",
               "National animal of {name}?", "Tell me the national animal of {name}.",
               "Name the animal that represents {name}.", "What animal stands for {name}?",
               "About {name}: which animal is its national animal?", "For {name}, what is the national animal?",
               "Which animal does {name} have as its symbol?", "I am curious: {name} has which national animal?",
               "Do you know which animal {name} has as its national animal?", "Quick one on {name}: the national animal?",
               "Help me find the national animal that belongs to {name}.",
               "My question concerns {name}. Which animal is its national animal?",
               "Which animal is on the emblem of {name}?", "What is {name}'s national animal?"),
    "population_sum": ("What is the total population of {name} and {other}?",
                       "How many people live in {name} and {other} together?",
                       "Combined population of {name} and {other}?",
                       "Add up the populations of {name} and {other}.",
                       "Tell me how many people {name} and {other} have in total.",
                       "What do the populations of {name} and {other} sum to?",
                       "About {name} and {other}: how many people live there in total?",
                       "For {name} and {other}, what is the combined population?",
                       "How many people do {name} and {other} have together?",
                       "I am curious: {name} and {other} have how many people in total?",
                       "Do you know how many people {name} and {other} have together?",
                       "Quick one on {name} and {other}: their combined population?",
                       "Help me find the combined population that belongs to {name} and {other}.",
                       "My question concerns {name} and {other}. How many people live there in total?",
                       "Add the population of {name} to the population of {other}.",
                       "Take the population of {name}, then the population of {other}. What is the total?",
                       "If you count everyone in {name} and {other}, how many people is that?",
                       "What is the population of {name} plus that of {other}?"),
}
HELDOUT = 2  # the last phrasings of each family are for evaluation only
# Training questions composed of a lead-in that names the country (or the two) and a follow-up that asks about
# it: "Speaking of X. Which city is its capital?". With them the name follows some thirty different words, and
# the model learns to copy the name wherever it stands rather than the word after a few fixed ones (session 21:
# a first lookup copied the name right in 37 of 50 held-out questions with the name after "is", 49 of 50 after
# "of"; a sum's second name after "plus that of" in 9 of 50, since every training sum joined the names with
# "and"). Generic wordings, none of them a held-out phrasing.
COMPOSED_SHARE = 0.5  # of the training traces
# the families of the training traces in turn: sums, the longest chain (two lookups, add, a copied total), half
TRACE_FAMILIES = ("capital", "animal", "population_sum", "population_sum")
LEAD_INS = ("Speaking of {name}.", "Regarding {name}:", "Thinking about {name}.", "Consider {name}.",
            "As for {name},", "Take {name}.", "Look at {name}.", "Back to {name}.", "On to {name}.",
            "Now for {name}.", "What about {name}?", "I just read about {name}.", "My cousin moved to {name}.",
            "There is a country called {name}.", "Our next trip goes to {name}.", "We keep hearing about {name}.",
            "Let us turn to {name}.", "Next up is {name}.", "Then there is {name}.",
            "Someone mentioned {name}.", "My friends visited {name}.", "Here is one: {name}.", "Picture {name}.",
            "Today's topic: {name}.", "Our class studies {name}.", "Think of {name}.",
            "A question on {name}.", "We compare {name}.")
PAIR_JOINS = ("{name} and {other}", "{name} with {other}", "{name} together with {other}", "{name} as well as {other}",
              "{name} along with {other}", "both {name} and {other}", "{name}, also {other}", "{name} next to {other}",
              "{name} beside {other}", "{name} then {other}", "{name} and, after that, {other}",
              "{name} and also the country {other}", "{name} and its neighbour {other}", "{name}, and then {other}")
FOLLOW_UPS = {"capital": ("Which city is its capital?", "What is its capital?", "Name its capital city.",
                          "Its capital, please?", "Which city does it have as its capital?",
                          "Which is its main city?"),
              "animal": ("What is its national animal?", "Which animal is its symbol?", "Name its national animal.",
                         "Its national animal, please?", "Which animal stands for it?"),
              "population_sum": ("How many people live there in total?", "What is their combined population?",
                                 "Add up their populations.", "How many people do they have together?",
                                 "Their total population, please?")}
# what the agent says as it makes its first lookup: the family is decided right after the question, and the
# answer later repeats these words instead of choosing again after a long tool result
ANNOUNCE = {"capital": "Looking up the capital of {name}.",
            "animal": "Looking up the national animal of {name}.",
            "population_sum": "Looking up the populations of {name} and {other}."}
# a sum's answer opens with the words the add tool's result opens with ("total: 158", then "Total: 158 million
# ..."), so the number is copied along the same pieces (`ot|al|:| 15|8`). Worded as the pretraining corpus words
# sums ("X and Y have 158 million people together") the answer was right in 21 of 40 sums whose lookups were
# right, worded as here in 27 of 49, the number first without words before it in 6 of 46 (session 21); a three-digit
# total's last piece is still often the model's own guess (157 for 156)
ANSWERS = {"capital": "The capital of {name} is {capital}.",
           "animal": "The national animal of {name} is the {animal}.",
           "population_sum": "Total: {total} million people live in {name} and {other}."}


@dataclass(frozen=True)
class AgentTask:
    family: str
    question: str
    countries: tuple[Country, ...]
    answer_word: str  # the final answer must contain it


def _agent_candidates(seed: int, n: int) -> list[Country]:
    """What :func:`agent_world` draws its ``n`` countries from."""
    return make_world(seed + AGENT_WORLD_OFFSET, n * 2)


def agent_world(seed: int, taken: set[str], n: int = AGENT_COUNTRIES) -> list[Country]:
    """Countries of a second world, none sharing a name or capital with the pretraining world, with at most
    ``AGENT_MAX_POPULATION`` million people each."""
    world = [c for c in _agent_candidates(seed, n) if c.name not in taken and c.capital not in taken]
    return [_smaller(c) for c in world[:n]]


def _smaller(country: Country) -> Country:
    """A second-world country: half a drawn country's population, rounded up (``AGENT_MAX_POPULATION``)."""
    return replace(country, population=(country.population + 1) // 2)


def agent_world_names(seed: int, n: int = AGENT_COUNTRIES) -> set[str]:
    """Every name and capital :func:`agent_world` may draw from (kept out of the pretraining corpus)."""
    return world_names(_agent_candidates(seed, n))


def split_countries(world: list[Country]) -> tuple[list[Country], list[Country]]:
    cut = int(len(world) * TRAIN_SHARE)
    return world[:cut], world[cut:]


def training_pool(world: list[Country], seed: int, taken: set[str], n: int = COVERAGE_POOL) -> list[Country]:
    """What training traces may ask about: the world's training split, then training-only countries of a third draw
    (``seed`` as :func:`agent_world`'s; none shares a name or capital with the pretraining world, ``taken``, or with
    any country of ``world``, so the held-out countries stay unseen), populations as the world's."""
    train, _ = split_countries(world)
    known = taken | world_names(world)
    extra = [_smaller(c) for c in make_world(seed + AGENT_WORLD_OFFSET + 1, n)
             if c.name not in known and c.capital not in known]
    return train + extra


class OpeningCoverage:
    """Chooses training countries by the piece their name opens with, sampled with temperature (as multilingual
    pretraining samples languages): an opening that ``f`` of the pool's names have is chosen with a weight of
    ``f ** alpha``, then a country of it at random. ``alpha`` 1 is drawing countries uniformly; lower lifts the
    rare openings. ``opening`` gives a word's first piece as the model's tokenizer writes it (after a space, as in
    a question)."""

    def __init__(self, pool: list[Country], opening: Callable[[str], str], alpha: float = COVERAGE_ALPHA):
        self.pool = pool
        self.by_opening: dict[str, list[Country]] = {}
        for country in pool:
            self.by_opening.setdefault(opening(country.name), []).append(country)
        self.openings = list(self.by_opening)
        self.weights = [len(self.by_opening[o]) ** alpha for o in self.openings]

    def choose(self, rng: random.Random, other_than: Country | None = None) -> Country:
        while True:
            [opening] = rng.choices(self.openings, self.weights)
            country = rng.choice(self.by_opening[opening])
            if country is not other_than:
                return country


def lookup_country(world: list[Country], name: str) -> dict:
    """A country's facts; for a name it does not know, an error with the closest name it does know (by
    edit-distance ratio, rapidfuzz), as a search box answers a typo — what a recovering agent retries with."""
    for country in world:
        if country.name.lower() == str(name).strip().lower():
            return {"capital": country.capital, "animal": country.animal, "population_millions": country.population}
    return {"error": f"no country named {name}", "did_you_mean": closest_name(world, str(name))}


def closest_name(world: list[Country], name: str) -> str:
    from rapidfuzz import fuzz, process, utils

    return process.extractOne(name, [c.name for c in world], scorer=fuzz.ratio, processor=utils.default_process)[0]


def run_tool(world: list[Country], name: str, arguments: dict) -> str:
    """The tool's result as the model reads it: ``key: value`` lines (see :func:`result_text`)."""
    if name == "lookup_country" and set(arguments) == {"name"}:
        return result_text(lookup_country(world, arguments["name"]))
    if name == "add" and set(arguments) == {"a", "b"} and all(isinstance(v, (int, float)) for v in arguments.values()):
        return result_text({"total": arguments["a"] + arguments["b"]})
    return result_text({"error": f"bad call of {name}"})


def result_text(fields: dict) -> str:
    """A tool result as ``key: value`` lines, as the template writes call arguments: a name the answer must
    copy then follows a space, as it does in prose, and keeps its pieces (in JSON it follows a quote, which a
    byte-level tokenizer splits differently: ``"L|e|vela|holm`` against `` L|e|vela|holm``)."""
    return "\n".join(f"{key}: {value}" for key, value in fields.items())


def result_fields(text: str) -> dict[str, str]:
    """:func:`result_text` read back (values as strings)."""
    return dict(line.partition(": ")[::2] for line in text.split("\n") if ": " in line)


def valid_call(name: str, arguments: Any) -> bool:
    """Names an offered tool, with exactly its arguments, of their declared types."""
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}.get(name)
    if schema is None or not isinstance(arguments, dict) or set(arguments) != set(schema["required"]):
        return False
    kinds = {"string": str, "integer": int}
    return all(isinstance(arguments[k], kinds[v["type"]]) and not isinstance(arguments[k], bool)
               for k, v in schema["properties"].items())


def composed_phrasing(rng: random.Random, family: str) -> str:
    """A training phrasing made of a lead-in and a follow-up (``LEAD_INS``), with the slots of ``FACT_PHRASINGS``."""
    lead = rng.choice(LEAD_INS)
    if family == "population_sum":
        lead = lead.replace("{name}", rng.choice(PAIR_JOINS))
    return f"{lead} {rng.choice(FOLLOW_UPS[family])}"


def make_task(rng: random.Random, family: str, phrasing: int | str, countries: list[Country],
              vary: Callable[[str], str] = lambda template: template, coverage: OpeningCoverage | None = None) -> AgentTask:
    """A task of ``family`` in its ``phrasing`` (an index into ``FACT_PHRASINGS[family]``, or a phrasing's text)
    about ``countries`` drawn at random, or chosen by ``coverage`` (then from its pool); ``vary`` rewrites the
    phrasing's own words (training only)."""
    if coverage is None:
        first = rng.choice(countries)
        other = rng.choice([c for c in countries if c is not first])
    else:
        first = coverage.choose(rng)
        other = coverage.choose(rng, other_than=first) if family == "population_sum" else first
    template = FACT_PHRASINGS[family][phrasing] if isinstance(phrasing, int) else phrasing
    question = vary(template).format(name=first.name, other=other.name)
    if family == "capital":
        return AgentTask(family, question, (first,), first.capital)
    if family == "animal":
        return AgentTask(family, question, (first,), first.animal)
    return AgentTask(family, question, (first, other), str(first.population + other.population))


def _call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def misspelling(name: str, world: list[Country], rng: random.Random, tries: int = 8) -> str | None:
    """A slip of the kind the small model makes when it copies a name it never read before (its first letters
    or a letter inside changed, a letter lost), which no country has and the lookup's ``did_you_mean``
    corrects back to ``name``; None when no such slip is found in ``tries``."""
    names = {c.name.lower() for c in world}
    for _ in range(tries):
        kind, cut = rng.randrange(4), rng.randrange(1, max(2, len(name) - 1))
        if kind == 0:  # another first letter
            slip = rng.choice([c for c in "BDFGKLMNPRSTVZ" if c != name[0]]) + name[1:]
        elif kind == 1:  # another country's opening
            donor = rng.choice(world).name
            slip = donor[:rng.randrange(2, 4)] + name[rng.randrange(2, 4):]
        elif kind == 2:  # a letter lost
            slip = name[:cut] + name[cut + 1:]
        else:  # a letter inside changed
            slip = name[:cut] + rng.choice([c for c in "aeioudrtlkv" if c != name[cut]]) + name[cut + 1:]
        if slip.lower() not in names and closest_name(world, slip) == name:
            return slip
    return None


def trace(task: AgentTask, world: list[Country], slip: tuple[int, str] | None = None, announce: bool = True) -> dict:
    """The full conversation a good agent has: calls, results, answer (a training record with tools).

    ``slip`` = (k, wrong name): the first lookup of the k-th country asks for the wrong name; the tool says so
    and suggests the right one, and the agent looks that up again. The mistaken turn has ``weight: 0``: it is
    context the model learns to recover from, never a reply it learns to write.
    """
    first = task.countries[0]
    messages: list[dict] = [{"role": "user", "content": task.question}]
    asked = [slip[1] if slip and slip[0] == i else c.name for i, c in enumerate(task.countries)]
    looked = [_call(f"call_{i}", "lookup_country", {"name": name}) for i, name in enumerate(asked)]
    values = {"name": first.name, "other": task.countries[-1].name, "capital": first.capital, "animal": first.animal}
    said = ANNOUNCE[task.family].format(**values) if announce else ""
    messages.append({"role": "assistant", "content": said, "tool_calls": looked, **({"weight": 0} if slip else {})})
    for call, name in zip(looked, asked):
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": run_tool(world, "lookup_country", {"name": name})})
    if slip:
        again = _call("call_5", "lookup_country", {"name": task.countries[slip[0]].name})
        messages.append({"role": "assistant", "content": "", "tool_calls": [again]})
        messages.append({"role": "tool", "tool_call_id": "call_5", "content": run_tool(world, "lookup_country", again["function"]["arguments"])})
    if task.family == "population_sum":
        other = task.countries[1]
        add = _call("call_9", "add", {"a": first.population, "b": other.population})
        messages.append({"role": "assistant", "content": "", "tool_calls": [add]})
        messages.append({"role": "tool", "tool_call_id": "call_9", "content": run_tool(world, "add", add["function"]["arguments"])})
        values["total"] = first.population + other.population
    messages.append({"role": "assistant", "content": ANSWERS[task.family].format(**values)})
    return {"messages": messages, "tools": TOOLS, "meta": {"family": f"agent_{task.family}"}}


def training_traces(world: list[Country], n: int, seed: int, recovering: float = 0.0,
                    announce: bool = True, coverage: OpeningCoverage | None = None) -> list[dict]:
    """``n`` traces about training countries in training phrasings, varied as the task families' prompts are;
    the countries drawn at random from the world's training split, or chosen by ``coverage`` from its pool
    (:func:`training_pool`); a share ``recovering`` of them first looks up a misspelt name and recovers (see
    :func:`trace`); ``announce``: the first lookup says what it looks up (``ANNOUNCE``)."""

    train, _ = split_countries(world)
    if coverage is not None:  # the tool knows the pool's training-only countries too
        known = set(world)
        world = world + [c for c in coverage.pool if c not in known]
    rng = random.Random(seed + 29)
    slips = random.Random(seed + 37)  # its own stream: the tasks are the same whatever the share
    records = []
    for k in range(n):
        task = training_task(rng, TRACE_FAMILIES[k % len(TRACE_FAMILIES)], train, coverage)
        slip = None
        if slips.random() < recovering:
            which = slips.randrange(len(task.countries))
            wrong = misspelling(task.countries[which].name, world, slips)
            slip = (which, wrong) if wrong else None
        records.append(trace(task, world, slip, announce))
    rng.shuffle(records)
    return records


def training_task(rng: random.Random, family: str, countries: list[Country],
                  coverage: OpeningCoverage | None = None) -> AgentTask:
    """A task of ``family`` in a training phrasing (a fixed one, or half the time a composed one), its words varied,
    about ``countries`` (or chosen by ``coverage``)."""
    phrasing: int | str = rng.randrange(len(FACT_PHRASINGS[family]) - HELDOUT)
    if rng.random() < COMPOSED_SHARE:
        phrasing = composed_phrasing(rng, family)
    # no phrasing opens with a slot, so the surface variation's lower-cased first letter never touches a name
    return make_task(rng, family, phrasing, countries, lambda template: surface_variation(vary_words(template, rng), rng),
                     coverage)


def rl_prompts(world: list[Country], n: int, seed: int) -> list[dict]:
    """Prompt records for agentic RL (``tuneful demo --rl``): training phrasings (varied as the traces' are) about
    the world's training countries, fresh draws (their own seed), the tools offered and the answer word kept for
    the reward. Held-out phrasings and held-out countries are never among them."""
    train, _ = split_countries(world)
    rng = random.Random(seed + 4_241)
    records = []
    for k in range(n):
        task = training_task(rng, TRACE_FAMILIES[k % len(TRACE_FAMILIES)], train)
        records.append({"messages": [{"role": "user", "content": task.question}], "tools": TOOLS,
                        "answer": task.answer_word, "family": task.family})
    return records


def agent_reward(prompt: list[dict], completion: str, record: dict) -> float:
    """The evaluation's verifier as a reward: 1 when the final answer holds the task's answer word."""
    return float(str(record["answer"]).lower() in completion.lower())


def sandbox_tools(world: list[Country]) -> dict[str, Callable[..., str]]:
    """The agent's tools as Python functions (GRPO's episodes run them): exactly :func:`run_tool`'s answers."""
    return {name: (lambda name: lambda **arguments: run_tool(world, name, arguments))(name)
            for name in (t["function"]["name"] for t in TOOLS)}


def eval_tasks(world: list[Country], per_family: int, seed: int) -> list[AgentTask]:
    """Held-out phrasings about held-out countries."""
    _, held = split_countries(world)
    rng = random.Random(seed + 31)
    tasks = []
    for family, phrasings in FACT_PHRASINGS.items():
        for k in range(per_family):
            tasks.append(make_task(rng, family, len(phrasings) - HELDOUT + k % HELDOUT, held))
    return tasks


def run_agents(generate_texts: Callable[[list[list[dict]], list[dict] | None], list[str]], tasks: list[AgentTask],
               world: list[Country], *, tools: bool, parser: str) -> tuple[dict, list[dict]]:
    """The agent loop for every task at once — :func:`tuneful.infer.episodes.play_episodes`, the loop GRPO's
    episodes and ``tuneful eval --tools`` run, with the sandbox's tools: a round is one batched
    ``generate_texts(conversations, offered tools)`` for the unfinished tasks; calls are parsed (``parser``: the
    call syntax the model's template writes, ``tool_parsers.PARSERS``) and run, their results handed back; the final
    answer is the text, before any call, of the last turn (a reply without calls, one whose calls do not parse, or
    the turn at the cap). Without tools, the first reply is. Returns the accuracy, the valid-call rate
    (the sandbox's own: an offered tool with exactly its arguments, of their types) and every transcript."""

    def next_turns(live: list[Episode], round_: int) -> list[Turn]:
        texts = generate_texts([e.messages for e in live], TOOLS if tools else None)
        return [Turn([], [], text, True) for text in texts]  # a text-level policy: no ids, never cut

    episodes = play_episodes([Episode(k, [{"role": "user", "content": t.question}]) for k, t in enumerate(tasks)],
                             next_turns, sandbox_tools(world) if tools else {}, PARSERS[parser],
                             max_turns=MAX_ROUNDS if tools else 1)
    calls = [call["function"] for e in episodes for m in e.messages for call in m.get("tool_calls") or []]
    attempts = len(calls) + sum(e.unparsed for e in episodes)
    valid = sum(valid_call(call["name"], call["arguments"]) for call in calls)
    rows = []
    for task, episode in zip(tasks, episodes):
        correct = task.answer_word.lower() in episode.final.lower()  # as tuneful eval --tools scores
        missed = any(m["role"] == "tool" and "did_you_mean" in result_fields(m["content"]) for m in episode.messages)
        rows.append({"family": task.family, "question": task.question, "final": episode.final, "correct": correct,
                     "answered": episode.answered, "reference": task.answer_word, "missed_a_lookup": missed,
                     "transcript": episode.messages})
    by_family = {f: _share([r["correct"] for r in rows if r["family"] == f]) for f in FACT_PHRASINGS}
    summary = {"accuracy": _share([r["correct"] for r in rows]), "by_family": by_family,
               "valid_call_rate": valid / attempts if attempts else 0.0, "calls": attempts,
               "missed_a_lookup": sum(r["missed_a_lookup"] for r in rows),
               "recovered": sum(r["missed_a_lookup"] and r["correct"] for r in rows)}
    return summary, rows


def _share(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0
