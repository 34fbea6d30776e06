"""The sandbox agent's pieces: a second world unknown to the base model, tools backed by it, training
traces that render with the sandbox template and train the calls, and the agent loop's scoring."""

from __future__ import annotations

import json
import re
from collections import Counter

from tuneful.sandbox.agent import (AGENT_COUNTRIES, AGENT_MAX_POPULATION, DEMO_TRACES, FACT_PHRASINGS, HELDOUT, TOOLS,
                                   agent_world, eval_tasks, result_fields, run_agents, run_tool, split_countries, trace,
                                   training_traces, valid_call)
from tuneful.sandbox.base import load_recipe, shipped_base_dir
from tuneful.sandbox.world import make_world


def _worlds():
    recipe = load_recipe(shipped_base_dir())
    world = make_world(recipe.seed, recipe.countries)
    taken = {c.name for c in world} | {c.capital for c in world}
    return world, agent_world(recipe.seed, taken), taken


def test_the_second_world_shares_no_name_with_the_pretraining_world():
    _, tool_world, taken = _worlds()
    assert len(tool_world) == AGENT_COUNTRIES and not ({c.name for c in tool_world} | {c.capital for c in tool_world}) & taken


def test_a_sum_of_two_second_world_populations_is_one_piece_of_the_sandbox_tokenizer():
    from transformers import AutoTokenizer

    _, tool_world, _ = _worlds()
    populations = {c.population for c in tool_world}
    assert min(populations) == 1 and max(populations) == AGENT_MAX_POPULATION
    tokenizer = AutoTokenizer.from_pretrained(shipped_base_dir())
    assert all(len(tokenizer.tokenize(f" {total}")) == 1 for total in range(2, 2 * AGENT_MAX_POPULATION + 1))


def test_traces_use_training_countries_and_phrasings_and_evaluation_the_held_out_ones():
    _, tool_world, _ = _worlds()
    train, held = split_countries(tool_world)
    records = training_traces(tool_world, 60, seed=0)
    held_names = {c.name for c in held}
    held_phrasings = [re.compile(re.escape(p.rstrip("?.")).replace(r"\{name\}", ".+").replace(r"\{other\}", ".+"), re.I)
                      for phrasings in FACT_PHRASINGS.values() for p in phrasings[-HELDOUT:]]
    exact = [re.compile(re.escape(p).replace(r"\{name\}", ".+").replace(r"\{other\}", ".+") + "$")
             for phrasings in FACT_PHRASINGS.values() for p in phrasings]
    varied = 0
    for record in records:
        text = json.dumps(record["messages"])
        question = record["messages"][0]["content"]
        assert not any(name in text for name in held_names)
        assert not any(p.search(question) for p in held_phrasings)
        varied += not any(p.match(question) for p in exact)
    assert varied > 20  # training questions are varied as the task families' prompts are
    for task in eval_tasks(tool_world, 4, seed=0):
        assert all(c in held for c in task.countries)


def test_training_questions_put_the_names_after_many_different_words():
    """Half the training questions are a lead-in and a follow-up ("Speaking of X. Which city is its capital?"), so
    the word before a name varies widely, and a sum's two names are joined in many ways, not always by "and"."""
    _, tool_world, _ = _worlds()
    records = training_traces(tool_world, 400, seed=0)
    before_first, between = set(), set()
    for record in records:
        question = record["messages"][0]["content"]
        names = [c["function"]["arguments"]["name"] for c in record["messages"][1]["tool_calls"]]
        start = question.index(names[0])
        before_first.add(question[:start].split()[-1].lower())
        if len(names) == 2:
            between.add(question[start + len(names[0]):question.index(names[1], start + len(names[0]))].strip())
    assert len(before_first) >= 25 and len(between) >= 10
    families = Counter(r["meta"]["family"] for r in records)
    assert families["agent_population_sum"] == 2 * families["agent_capital"] == 2 * families["agent_animal"]


def test_opening_coverage_samples_openings_with_temperature():
    """Literal: openings are first letters, 90 countries open with "A" and one with "B". With alpha 1 the sampling
    is uniform over countries ("B" about 1 in 91), with alpha 0 uniform over openings ("B" about 1 in 2)."""
    import random

    from tuneful.sandbox.agent import OpeningCoverage
    from tuneful.sandbox.world import Country

    pool = [Country(f"A{k}", f"C{k}", "north", "red", "fox", 1) for k in range(90)] + [Country("Bee", "Cb", "north", "red", "fox", 2)]
    rng = random.Random(0)
    flat, uniform = OpeningCoverage(pool, lambda word: word[0], alpha=0.0), OpeningCoverage(pool, lambda word: word[0], alpha=1.0)
    chosen = Counter(flat.choose(rng).name[0] for _ in range(400))
    assert 160 <= chosen["B"] <= 240
    assert sum(uniform.choose(rng) is pool[-1] for _ in range(400)) <= 15
    assert all(flat.choose(rng, other_than=pool[-1]) is not pool[-1] for _ in range(50))
    assert abs(OpeningCoverage(pool, lambda word: word[0], alpha=0.5).weights[0] - 90 ** 0.5) < 1e-9


def test_training_traces_copy_almost_every_opening_piece_of_the_held_out_names():
    """With ``OpeningCoverage`` over the training split and training-only countries (none named as a held-out
    country), almost every held-out name opens with a piece that training lookups copy several times; drawn
    uniformly from the training split, many held-out openings are copied rarely or never."""
    from transformers import AutoTokenizer

    from tuneful.sandbox.agent import OpeningCoverage, training_pool

    _, tool_world, taken = _worlds()
    tokenizer = AutoTokenizer.from_pretrained(shipped_base_dir())
    opening = lambda word: tokenizer.tokenize(" " + word)[0]  # noqa: E731
    pool = training_pool(tool_world, load_recipe(shipped_base_dir()).seed, taken)
    train, held = split_countries(tool_world)
    assert pool[:len(train)] == train and len(pool) > 9 * len(train)
    assert not {x for c in pool for x in (c.name, c.capital)} & ({x for c in held for x in (c.name, c.capital)} | taken)
    assert max(c.population for c in pool) == AGENT_MAX_POPULATION
    held_openings = Counter(opening(c.name) for c in held)

    def copied(records, times=2):
        """The share of held-out names whose opening piece training lookups copy at least ``times`` times."""
        counts = Counter(opening(call["function"]["arguments"]["name"]) for r in records for call in r["messages"][1]["tool_calls"])
        return sum(n for piece, n in held_openings.items() if counts[piece] >= times) / len(held)

    covered = training_traces(tool_world, 600, seed=0, coverage=OpeningCoverage(pool, opening))
    held_names = {c.name for c in held}
    assert not any(name in json.dumps(r["messages"]) for r in covered for name in held_names)
    facts = [m["content"] for r in covered for m in r["messages"] if m["role"] == "tool"]
    assert not any("error" in f for f in facts)  # the tool knows the training-only countries
    uniform = training_traces(tool_world, 600, seed=0)
    assert copied(covered) >= 0.94 > 0.91 > copied(uniform)  # measured: 0.959 against 0.892


def test_a_trace_renders_and_masks_with_the_sandbox_template():
    from transformers import AutoTokenizer

    from tuneful.tokenization.masking import ConversationTokenizer
    from tuneful.templates.registry import builtin

    _, tool_world, _ = _worlds()
    train, _ = split_countries(tool_world)
    import random

    from tuneful.sandbox.agent import make_task

    record = trace(make_task(random.Random(0), "population_sum", 0, train), tool_world)
    tokenizer = AutoTokenizer.from_pretrained(shipped_base_dir())
    example = ConversationTokenizer(tokenizer, builtin("tuneful"))(record["messages"], tools=record["tools"])
    trained = tokenizer.decode([t for t, m in zip(example.input_ids, example.train_mask) if m])
    assert trained.count("<tool_call>") == 3 and record["messages"][-1]["content"] in trained  # two lookups, the add, the answer
    assert "population_millions" not in trained  # tool results are context, never trained
    assert "lookup_country(name: string)" in tokenizer.decode(example.input_ids)
    # a copied name keeps the pieces it has in the question: written after a space, not after a quote
    first = record["messages"][1]["tool_calls"][0]["function"]["arguments"]["name"]
    pieces = tokenizer.tokenize(" " + first)
    question = tokenizer(record["messages"][0]["content"])["input_ids"]
    call = tokenizer(f"<tool_call>lookup_country\nname: {first}\n</tool_call>")["input_ids"]
    assert f"<tool_call>lookup_country\nname: {first}\n</tool_call>" in trained
    for ids in (question, call):
        assert any(tokenizer.convert_ids_to_tokens(ids[i:i + len(pieces)]) == pieces for i in range(len(ids)))


def test_a_recovering_trace_trains_the_second_lookup_and_never_the_slip():
    """A share of the traces first looks up a misspelt name; the tool says so and suggests the right one; the
    mistaken turn has weight 0, so its call is context (as the tool's error is) and only the recovery is trained."""
    import random

    from transformers import AutoTokenizer

    from tuneful.data.formats import FORMATS
    from tuneful.sandbox.agent import make_task, misspelling
    from tuneful.tokenization.masking import ConversationTokenizer
    from tuneful.templates.registry import builtin

    _, tool_world, _ = _worlds()
    train, _ = split_countries(tool_world)
    task = make_task(random.Random(0), "population_sum", 0, train)
    wrong = misspelling(task.countries[1].name, tool_world, random.Random(3))
    assert wrong and wrong != task.countries[1].name
    record = trace(task, tool_world, (1, wrong))
    roles = [(m["role"], m.get("weight")) for m in record["messages"]]
    assert roles == [("user", None), ("assistant", 0), ("tool", None), ("tool", None), ("assistant", None),
                     ("tool", None), ("assistant", None), ("tool", None), ("assistant", None)]
    error = result_fields(record["messages"][3]["content"])
    assert error == {"error": f"no country named {wrong}", "did_you_mean": task.countries[1].name}
    [conv] = FORMATS["messages"].convert(record)
    tokenizer = AutoTokenizer.from_pretrained(shipped_base_dir())
    example = ConversationTokenizer(tokenizer, builtin("tuneful"))(conv)
    trained = tokenizer.decode([t for t, m in zip(example.input_ids, example.train_mask) if m])
    assert wrong not in trained and trained.count("<tool_call>") == 2  # the second lookup and the add
    assert trained.count(task.countries[1].name) == 2 and task.countries[0].name in trained  # the retry, the answer
    # the share: a quarter of the traces recover, and the tasks are the same whatever the share
    some, none = training_traces(tool_world, 200, seed=0, recovering=0.25), training_traces(tool_world, 200, seed=0)
    slipped = sum(any(m.get("weight") == 0 for m in r["messages"]) for r in some)
    assert 30 <= slipped <= 70 and not any(m.get("weight") == 0 for r in none for m in r["messages"])
    assert sorted(r["messages"][0]["content"] for r in some) == sorted(r["messages"][0]["content"] for r in none)


def test_tools_answer_from_the_second_world_and_check_their_arguments():
    _, tool_world, _ = _worlds()
    country = tool_world[0]
    facts = run_tool(tool_world, "lookup_country", {"name": country.name})
    assert facts == f"capital: {country.capital}\nanimal: {country.animal}\npopulation_millions: {country.population}"
    assert result_fields(facts)["capital"] == country.capital
    assert "error" in result_fields(run_tool(tool_world, "lookup_country", {"name": "Atlantis"}))
    typo = result_fields(run_tool(tool_world, "lookup_country", {"name": "X" + country.name[1:]}))  # a first letter wrong
    assert typo == {"error": f"no country named X{country.name[1:]}", "did_you_mean": country.name}
    assert run_tool(tool_world, "add", {"a": 2, "b": 40}) == "total: 42"
    assert valid_call("add", {"a": 1, "b": 2}) and not valid_call("add", {"a": "1", "b": 2})
    assert not valid_call("lookup", {"name": "x"}) and not valid_call("lookup_country", {"country": "x"})
    assert [t["function"]["name"] for t in TOOLS] == ["lookup_country", "add"]


def test_the_agent_loop_runs_calls_and_scores_final_answers():
    """A scripted model: looks the country up, then answers from the tool's result (or answers at once
    without tools). Accuracy, valid-call rate and transcripts come out of the loop as for a real model."""
    _, tool_world, _ = _worlds()
    tasks = [t for t in eval_tasks(tool_world, 2, seed=0) if t.family == "capital"]

    def scripted(conversations, tools):
        replies = []
        for conversation in conversations:
            last = conversation[-1]
            if tools and last["role"] == "user":
                name = next(c.name for c in tool_world if c.name in last["content"])
                replies.append(f"<tool_call>lookup_country\nname: {name}\n</tool_call>")
            elif last["role"] == "tool":
                replies.append(f"The capital is {result_fields(last['content'])['capital']}.")
            else:
                replies.append("I do not know.")
        return replies

    with_tools, rows = run_agents(scripted, tasks, tool_world, tools=True, parser="tuneful")
    assert with_tools["accuracy"] == 1.0 and with_tools["valid_call_rate"] == 1.0 and with_tools["calls"] == len(tasks)
    assert rows[0]["transcript"][-2]["role"] == "tool"
    without, _ = run_agents(scripted, tasks, tool_world, tools=False, parser="tuneful")
    assert without["accuracy"] == 0.0 and without["calls"] == 0
    assert with_tools["missed_a_lookup"] == 0 == with_tools["recovered"]

    def slipping(conversations, tools):
        """Misspells each first lookup, then looks up the name the tool suggests."""
        replies = []
        for conversation in conversations:
            last = conversation[-1]
            result = result_fields(last["content"]) if last["role"] == "tool" else {}
            if last["role"] == "user" or "error" in result:
                name = ("X" + next(c.name for c in tool_world if c.name in last["content"])[1:]
                        if last["role"] == "user" else result["did_you_mean"])
                replies.append(f"<tool_call>lookup_country\nname: {name}\n</tool_call>")
            else:
                replies.append(f"The capital is {result['capital']}.")
        return replies

    recovering, rows = run_agents(slipping, tasks, tool_world, tools=True, parser="tuneful")
    assert recovering["accuracy"] == 1.0 and recovering["calls"] == 2 * len(tasks)
    assert recovering["missed_a_lookup"] == len(tasks) == recovering["recovered"] and rows[0]["missed_a_lookup"]


def test_the_demo_writes_agent_traces_only_when_asked(tmp_path):
    from tuneful.sandbox.base import load_recipe
    from tuneful.sandbox.demo import DemoSettings, _write_data, sandbox, tool_world_of

    settings = DemoSettings(out=tmp_path, sft_per_family=2)
    base, recipe, world = sandbox(settings)
    tool_world = tool_world_of(load_recipe(base), world)
    for traces in (0, 6):
        settings.agent_traces = traces
        train, _ = _write_data(tmp_path / f"data{traces}", settings, world, tool_world, recipe, base)
        rows = [json.loads(line) for line in train.read_text().splitlines()]
        with_tools = [r for r in rows if any(m.get("tool_calls") for m in r["messages"])]
        assert len(with_tools) == traces


def test_the_tuneful_template_lists_tools_compactly_whatever_their_types():
    from tuneful.templates.registry import builtin
    from tuneful.templates.render import render

    tools = [{"type": "function", "function": {"name": "f", "description": "Does f.", "parameters": {
        "type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {"type": "integer"}, "c": {}}}}},
        {"type": "function", "function": {"name": "g"}}]
    text = render([{"role": "user", "content": "hi"}], builtin("tuneful").source, add_generation_prompt=True,
                  special_tokens={}, tools=tools)
    assert text.startswith("<|system|>Tools:\nf(a: string|null, b: integer, c: any) - Does f.\ng()\n<|end|>")


def test_the_demo_runs_the_agent_unless_told_not_to_and_never_inside_the_experiments(monkeypatch, tmp_path):
    """`tuneful demo` trains on agent traces and reports `tools` by default; `--no-agent` skips it; the LIMA
    and FLAN experiments compare SFT sets without it."""
    from typer.testing import CliRunner

    import tuneful.sandbox.demo as demo
    import tuneful.sandbox.flan as flan
    from tuneful.cli.main import app

    seen = []

    class Stop(Exception):
        pass

    def capture(settings, *rest):
        seen.append(settings.agent_traces)
        raise Stop

    monkeypatch.setattr(demo, "run_demo", capture)
    monkeypatch.setattr(flan, "run_flan", capture)
    for args in ([], ["--no-agent"], ["--flan"], ["--agent", "--flan"]):
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), *args])
        assert isinstance(result.exception, Stop), result.output
    assert seen == [DEMO_TRACES, 0, 0, 0] and DEMO_TRACES > 0
