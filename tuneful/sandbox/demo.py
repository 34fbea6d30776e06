"""``tuneful demo``: instruction-tune the sandbox base model, then compare base and tuned.

setup (world, data) → SFT (tuneful's own trainer) → evaluation on held-out phrasings and held-out
families with the task verifiers → report.md + PNG plots + report.json. The numbers are whatever
the run measures.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import build, to_yaml
from ..data.tool_parsers import parser_for_template
from ..data.types import Message, PreferencePair
from ..dpo.config import DPOConfig
from ..dpo.trainer import run_dpo
from ..infer.chat_model import load_chat_model, prompt_renderer
from ..infer.generate import generate
from ..infer.prefix_cache import PrefixCache
from ..preference.pairs import collate_shared_prompt, preference_tokenizer, tokenize_pairs
from ..preference.reference import ResponseLogps
from ..sft.config import SFTConfig
from ..sft.trainer import run_sft
from ..templates.registry import builtin
from ..tokenization.masking import pad_id
from ..train.output import merge_adapter
from .after_sft import OnlineSettings, after_sft
from .agent import OpeningCoverage, agent_world, eval_tasks, run_agents, split_countries, training_pool, training_traces
from .base import BaseRecipe, base_corpus, load_recipe, shipped_base_dir
from .noisy import pair_for, preference_pairs
from .report import plot_families, plot_summary, render_markdown
from .tasks import (FAMILIES, FAMILY_BY_NAME, HELDOUT_FAMILIES, TaskInstance, eval_instances, sft_instances,
                    to_conversation, verify)
from .world import make_world, world_names


SEED_PROMPT = "Write a 3-line poem about cats."
TEMPLATE = "tuneful"
# rows decoded together in the sandbox's evaluations: a decoding step of the 4M model costs little more for 64 rows
# than for 16 (the Self-Instruct experiment's 1,408 eval prompts, greedy: 8.6-9.0 s at 16, 4.3-4.5 s at 64, the
# same answers; session 30)
EVAL_BATCH = 64


@dataclass
class DemoSettings:
    out: Path
    base_dir: Path | None = None
    sft_per_family: int = 500  # 9,500 conversations: 300 reached 69 % on held-out phrasings, 500 reached 74 %
    eval_per_family: int = 20
    epochs: float = 3.0
    lr: float = 1e-3
    micro_batch_size: int = 16
    lora: bool = False
    replay_ratio: float = 1.0
    max_new_tokens: int = 40
    seed: int = 0
    progress: bool = True
    dpo: bool = True  # DPO after SFT on the sandbox preference pairs, reported beside SFT
    dpo_pairs: int = 600
    dpo_lr: float = 5e-5
    dpo_beta: float = 0.1
    rl: bool = False  # after SFT also GRPO, online DPO, a reward model and GRPO on it (report.json "after_sft")
    online: Any = None  # after_sft.OnlineSettings; None = its defaults
    agent_traces: int = 0  # tool-use traces (call → result → answer) about the second world's training countries;
    # > 0 also runs the agent evaluation (report.json "tools"); `tuneful demo` sets agent.DEMO_TRACES (`--no-agent`: 0)
    agent_eval_per_family: int = 150  # held-out phrasings about held-out countries, per agent family (20 until session
    # 21: 60 tasks left about ±6 points of noise on the total; 50 until session 22: one model scored 69.3 % on those
    # 150 tasks and 74.0 % on 300 others; 450 leave about ±2 points and cost ~30 s more)
    agent_announce: bool = True  # the first lookup says what it looks up ("Looking up the capital of X.")
    agent_recovering: float = 0.0  # share of the traces whose first lookup is misspelt and recovered from (the slip
    # has weight 0); measured in session 17 (README, The sandbox agent): 0.1 and 0.25 did not help, so 0 by default
    agent_coverage: bool = True  # the traces' countries chosen by the piece their name opens with, sampled with
    # temperature (agent.OpeningCoverage), from training-only countries too; False: uniformly from the training split


def write_replay(folder: Path, recipe: BaseRecipe) -> Path:
    """The pretraining corpus, mixed into SFT batches so the facts it taught are not forgotten."""
    folder.mkdir(parents=True, exist_ok=True)
    replay = folder / "replay.jsonl"
    replay.write_text("".join(json.dumps({"text": d}) + "\n" for d in base_corpus(recipe)))
    return replay


def _write_data(folder: Path, settings: DemoSettings, world: list, tool_world: list,
                recipe: BaseRecipe, base: Path) -> tuple[Path, Path]:
    """The SFT data: the task families, and the agent's tool-use traces (their countries chosen to cover the opening
    pieces of the ``base`` tokenizer), shuffled together."""
    import random

    from transformers import AutoTokenizer

    replay = write_replay(folder, recipe)
    train = folder / "train.jsonl"
    records = [to_conversation(i) for i in sft_instances(world, settings.sft_per_family, settings.seed)]
    if settings.agent_traces:
        coverage = None
        if settings.agent_coverage:
            tokenizer = AutoTokenizer.from_pretrained(base)
            coverage = OpeningCoverage(training_pool(tool_world, recipe.seed, world_names(world)),
                                       lambda word: tokenizer.tokenize(" " + word)[0])
        records += training_traces(tool_world, settings.agent_traces, settings.seed, recovering=settings.agent_recovering,
                                   announce=settings.agent_announce, coverage=coverage)
    random.Random(settings.seed + 5).shuffle(records)
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    return train, replay


def sft_overrides(settings: DemoSettings, base: Path, train: Path, replay: Path, *, out: Path | None = None,
                  max_steps: int = 0) -> list[str]:
    """The demo's SFT recipe as ``key=value`` settings (replay of the pretraining corpus included); ``max_steps``
    > 0 fixes the step budget."""
    return [
        f"model.name_or_path={base}", f"data.train={train}", f"data.template={TEMPLATE}",
        "data.allow_template_change=true", f"data.max_length={448 if settings.agent_traces else 256}",
        "data.packing=false",  # agent traces reach ~430 tokens
        f"data.replay={replay}", f"data.replay_ratio={settings.replay_ratio}",
        f"train.output_dir={out or settings.out / 'sft'}", f"train.epochs={settings.epochs}",
        f"train.max_steps={max_steps}", f"train.lr={settings.lr}",
        f"train.micro_batch_size={settings.micro_batch_size}", "train.warmup_ratio=0.05", "train.resume=false",
        f"train.seed={settings.seed}", f"train.progress={settings.progress}", "train.log_every=5",
        f"lora.enabled={settings.lora}", "lora.r=32", "lora.alpha=64",
    ]


def _sft(settings: DemoSettings, base: Path, train: Path, replay: Path, *, out: Path | None = None,
         max_steps: int = 0, overrides: tuple[str, ...] = ()) -> Any:
    return run_sft(build(SFTConfig, None, sft_overrides(settings, base, train, replay, out=out, max_steps=max_steps)
                         + list(overrides)))


def write_sft_recipe(settings: DemoSettings) -> Path:
    """The demo's SFT data (``settings.out/data``) and recipe (``settings.out/sft.yaml``), for running the
    demo's SFT on its own (``tuneful sft OUT/sft.yaml``, or from the UI's Train page)."""

    base, recipe, world = sandbox(settings)
    train, replay = _write_data(settings.out / "data", settings, world, tool_world_of(recipe, world), recipe, base)
    path = settings.out / "sft.yaml"
    overrides = sft_overrides(settings, base, train, replay) + ["train.resume=true"]  # a re-launch continues
    path.write_text("# the sandbox demo's SFT (tuneful sandbox sft-recipe)\n" + to_yaml(build(SFTConfig, None, overrides)))
    return path


def write_pairs(settings: DemoSettings, world: list) -> Path:
    """The sandbox preference pairs (training phrasings): DPO's data, and the reward model's."""
    pairs = settings.out / "data" / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in preference_pairs(world, settings.dpo_pairs, settings.seed)))
    return pairs


def _dpo(settings: DemoSettings, sft_model: Path, world: list) -> Any:
    """DPO on preference pairs (training phrasings) after SFT; reference log-probs precomputed."""
    pairs = write_pairs(settings, world)
    overrides = [
        f"model.name_or_path={sft_model}", f"data.train={pairs}", "data.max_length=256", "data.eval_fraction=0.1",
        f"train.output_dir={settings.out / 'dpo'}", "train.epochs=1", f"train.lr={settings.dpo_lr}",
        f"dpo.beta={settings.dpo_beta}", "train.micro_batch_size=16", "train.resume=false",
        f"train.seed={settings.seed}", f"train.progress={settings.progress}", "train.log_every=5",
        f"lora.enabled={settings.lora}", "lora.r=32", "lora.alpha=64",
    ]
    return run_dpo(build(DPOConfig, None, overrides))


def heldout_pairs(world: list, sets: dict[str, list[TaskInstance]], seed: int) -> list[dict]:
    """For every held-out-phrasing prompt: its answer against a wrong one, and against a rambling one."""
    import random

    rng = random.Random(seed + 303)
    return [pair_for(rng, world, inst, FAMILY_BY_NAME[inst.family], kind)
            for inst in sets["heldout_phrasing"] for kind in ("wrong", "rambling")]


def preference_rates(model: Any, tokenizer: Any, pairs: list[dict]) -> dict[str, float]:
    """How often the model gives the chosen reply a higher mean log-probability per token than the rejected one.

    Per-token means, not sums: a sum favours the shorter reply whatever the model has learned.
    """
    import torch

    ctok = preference_tokenizer(tokenizer, builtin(TEMPLATE))
    examples = tokenize_pairs(ctok, [PreferencePair(tuple(Message(**m) for m in p["prompt"]), p["chosen"],
                                                    p["rejected"]) for p in pairs])
    module, wins = ResponseLogps(model).eval(), []
    with torch.no_grad():
        for start in range(0, len(examples), 32):
            sums, counts = module(**collate_shared_prompt(examples[start : start + 32], pad_id(tokenizer)).inputs())
            chosen, rejected = (sums / counts.clamp(min=1)).chunk(2)
            wins += (chosen > rejected).tolist()
    rates = {}
    for kind in ("wrong", "rambling"):
        picked = [w for w, p in zip(wins, pairs) if p["meta"]["rejected_is"] == kind]
        rates[f"prefers_chosen_over_{kind}"] = sum(picked) / len(picked)
    return rates


def _load(folder: Path) -> Any:
    """The weights as inference loads them (adapters merged into the base their folder names, fp32 on CPU)."""
    return load_chat_model(str(folder), template=TEMPLATE, device="cpu").model


def _prompt_ids(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """The inference prompt as a loaded model renders it (the sandbox template)."""
    return _renderer(tokenizer).prompt_ids(messages, tools)


@lru_cache(maxsize=4)
def _renderer(tokenizer: Any) -> Any:
    return prompt_renderer(tokenizer, builtin(TEMPLATE))


def _agent_texts(model: Any, tokenizer: Any, stop_ids: list[int]) -> Any:
    kept = PrefixCache()  # a task's next turn starts from the keys and values of its last one

    def texts(conversations: list[list[dict]], tools: list[dict] | None) -> list[str]:
        prompts = [_prompt_ids(tokenizer, c, tools) for c in conversations]
        return [g.text for g in generate(model, tokenizer, prompts, stop_ids=stop_ids, max_new_tokens=128,  # two calls ~110
                                         batch_size=EVAL_BATCH, prefix_cache=kept)]
    return texts


def evaluate_agents(models: dict[str, Any], tokenizer: Any, tool_world: list, settings: DemoSettings,
                    stop_ids: list[int]) -> tuple[dict, list[dict]]:
    """The agent loop on held-out phrasings about held-out countries of the second world: tuned and base
    with the tools, tuned without them (report.json ``tools``)."""
    tasks = eval_tasks(tool_world, settings.agent_eval_per_family, settings.seed)
    runs, rows = {}, []
    parser = parser_for_template(builtin(TEMPLATE).source)
    for name, model, tools in (("tuned_with_tools", models["tuned"], True), ("tuned_without_tools", models["tuned"], False),
                               ("base_with_tools", models["base"], True)):
        runs[name], transcripts = run_agents(_agent_texts(model, tokenizer, stop_ids), tasks, tool_world, tools=tools,
                                             parser=parser)
        rows += [{"run": name, **row} for row in transcripts]
    report = {name: run["accuracy"] for name, run in runs.items()}
    report.update(valid_call_rate=runs["tuned_with_tools"]["valid_call_rate"],
                  heldout_countries=[c.name for c in split_countries(tool_world)[1]],
                  by_family={name: run["by_family"] for name, run in runs.items()},
                  calls={name: run["calls"] for name, run in runs.items()},
                  missed_a_lookup=runs["tuned_with_tools"]["missed_a_lookup"], recovered=runs["tuned_with_tools"]["recovered"],
                  base_valid_call_rate=runs["base_with_tools"]["valid_call_rate"],
                  tasks=len(tasks), traces=settings.agent_traces, recovering=settings.agent_recovering,
                  announce=settings.agent_announce, coverage=settings.agent_coverage)
    return report, rows


def evaluate_agent_model(model_dir: Path, tokenizer: Any, tool_world: list, settings: DemoSettings,
                         stop_ids: list[int]) -> dict:
    """The agent evaluation of ``evaluate_agents`` (the same held-out tasks) for one model with the tools."""
    tasks = eval_tasks(tool_world, settings.agent_eval_per_family, settings.seed)
    run, _ = run_agents(_agent_texts(_load(model_dir), tokenizer, stop_ids), tasks, tool_world, tools=True,
                        parser=parser_for_template(builtin(TEMPLATE).source))
    return {"tuned_with_tools": run["accuracy"], "by_family": run["by_family"],
            "valid_call_rate": run["valid_call_rate"], "calls": run["calls"], "recovered": run["recovered"],
            "missed_a_lookup": run["missed_a_lookup"]}


def evaluate_model(model: Any, tokenizer: Any, sets: dict[str, list[TaskInstance]], stop_ids: list[int],
                   max_new_tokens: int, end_of_turn: int) -> tuple[dict, list[dict]]:
    """Accuracy per set and per family (verifier-checked), stop rate, and every answer.

    The stop rate counts answers ended by the end-of-turn token; a base model that ends the
    *document* (``<|endoftext|>``) has not learned to end a turn.
    """
    everything = [(name, inst) for name, insts in sets.items() for inst in insts]
    outputs = generate(model, tokenizer, [_prompt_ids(tokenizer, i.messages) for _, i in everything],
                       stop_ids=stop_ids, max_new_tokens=max_new_tokens, batch_size=EVAL_BATCH)
    rows = [{"set": name, "family": inst.family, "prompt": inst.messages[-1]["content"], "answer": out.text,
             "reference": inst.answer, "correct": verify(inst, out.text), "stopped": out.stop_token == end_of_turn}
            for (name, inst), out in zip(everything, outputs)]

    def accuracy(selected: list[dict]) -> float:
        return sum(r["correct"] for r in selected) / len(selected) if selected else 0.0

    by_family = {f.name: accuracy([r for r in rows if r["family"] == f.name]) for f in FAMILIES}
    summary = {f"{name}_accuracy": accuracy([r for r in rows if r["set"] == name]) for name in sets}
    summary["stop_rate"] = sum(r["stopped"] for r in rows) / len(rows)
    summary["by_family"] = by_family
    return summary, rows


def _seed_example(base_model: Any, tuned: Any, tokenizer: Any, stop_ids: list[int]) -> dict:
    raw = tokenizer(SEED_PROMPT, add_special_tokens=False)["input_ids"]
    chat = _prompt_ids(tokenizer, [{"role": "user", "content": SEED_PROMPT}])
    base_raw, base_chat = generate(base_model, tokenizer, [raw, chat], stop_ids=stop_ids, max_new_tokens=40)
    [tuned_chat] = generate(tuned, tokenizer, [chat], stop_ids=stop_ids, max_new_tokens=40)
    return {"prompt": SEED_PROMPT, "base_continuation": base_raw.text, "base_with_template": base_chat.text,
            "tuned": tuned_chat.text}


def quick_sizes(settings: DemoSettings, agent: bool) -> DemoSettings:
    """The demo's ``--quick`` sizes (a smoke run of about a minute on a CPU), set on ``settings``."""
    settings.sft_per_family, settings.eval_per_family, settings.epochs, settings.dpo_pairs = 20, 4, 1.0, 100
    settings.agent_traces, settings.agent_eval_per_family = (30, 4) if agent else (0, 4)
    settings.online = OnlineSettings(prompts=32, steps=2, prompts_per_step=2, group_size=4, rm_epochs=1.0,
                                     agent_prompts=16, agent_steps=2, agent_prompts_per_step=2, agent_group_size=4)
    return settings


def sandbox(settings: DemoSettings) -> tuple[Path, BaseRecipe, list]:
    """The base model folder (checked), its recorded recipe, and the world it was pretrained on."""
    base = settings.base_dir or shipped_base_dir()
    if not (base / "model.safetensors").exists():
        raise FileNotFoundError(f"no base model at {base}; build it with: tuneful sandbox build-base --out {base}")
    recipe = load_recipe(base)
    return base, recipe, make_world(recipe.seed, recipe.countries)


def tool_world_of(recipe: BaseRecipe, world: list) -> list:
    """The agent's second world: countries the base model never read about."""
    return agent_world(recipe.seed, world_names(world))


def stop_tokens(tokenizer: Any) -> tuple[int, list[int]]:
    """(the end-of-turn id, every id that ends generation: end-of-turn and end-of-document)."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")
    return end_of_turn, sorted({end_of_turn, tokenizer.eos_token_id})


@dataclass
class Experiment:
    """What every sandbox experiment (LIMA, FLAN) starts from and how it measures an arm: the base model, its
    world, the replay corpus, the tokenizer and its stop tokens; the demo's SFT recipe and evaluation."""

    demo: DemoSettings
    base: Path
    recipe: BaseRecipe
    world: list
    data: Path
    replay: Path
    tokenizer: Any
    end_of_turn: int
    stop_ids: list[int]

    def train(self, train: Path, out: Path, steps: int, overrides: tuple[str, ...] = ()) -> Any:
        """The demo's SFT recipe on ``train`` for ``steps`` optimizer steps, from the base model (``overrides``:
        ``key=value`` settings on top)."""
        return _sft(self.demo, self.base, train, self.replay, out=out, max_steps=steps, overrides=overrides)

    def train_and_evaluate(self, train: Path, out: Path, steps: int,
                           sets: dict[str, list[TaskInstance]]) -> tuple[Any, dict]:
        """SFT on ``train`` for ``steps`` optimizer steps, then the verifier-checked evaluation on ``sets``."""
        result = self.train(train, out, steps)
        summary, _ = evaluate_model(_load(result.model_dir), self.tokenizer, sets,
                                    self.stop_ids, self.demo.max_new_tokens, self.end_of_turn)
        return result, summary


def experiment(demo: DemoSettings) -> Experiment:
    from transformers import AutoTokenizer

    base, recipe, world = sandbox(demo)
    data = demo.out / "data"
    replay = write_replay(data, recipe)
    tokenizer = AutoTokenizer.from_pretrained(base)
    end_of_turn, stop_ids = stop_tokens(tokenizer)
    return Experiment(demo, base, recipe, world, data, replay, tokenizer, end_of_turn, stop_ids)


def run_demo(settings: DemoSettings) -> dict:
    from transformers import AutoTokenizer

    started = time.perf_counter()
    base, recipe, world = sandbox(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    tool_world = tool_world_of(recipe, world)
    train, replay = _write_data(settings.out / "data", settings, world, tool_world, recipe, base)
    result = _sft(settings, base, train, replay)

    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    end_of_turn, stop_ids = stop_tokens(tokenizer)
    sets = eval_instances(world, settings.eval_per_family, settings.seed)
    base_model = _load(base)
    tuned = _load(result.model_dir)
    models = {"base": base_model, "tuned": tuned}
    dpo = None
    sft_full = result.model_dir
    if settings.lora and (settings.dpo or settings.rl):  # later stages start from the SFT weights: merge first
        sft_full = merge_adapter(result.model_dir, settings.out / "sft" / "merged", base=str(base))
    if settings.dpo:
        dpo = _dpo(settings, sft_full, world)
        models["tuned+dpo"] = _load(dpo.model_dir)
    report: dict[str, Any] = {}
    answers = {}
    for name, model in models.items():
        report[name], answers[name] = evaluate_model(model, tokenizer, sets, stop_ids, settings.max_new_tokens,
                                                     end_of_turn)
    if settings.agent_traces:
        report["tools"], transcripts = evaluate_agents(models, tokenizer, tool_world, settings, stop_ids)
        (settings.out / "agent_transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in transcripts))
    if dpo is not None:
        pairs = heldout_pairs(world, sets, settings.seed)
        report["dpo"] = {"pairs": settings.dpo_pairs, "steps": dpo.steps, "final_loss": dpo.final_loss,
                         "eval": dpo.eval_metrics, "reference": dpo.details["reference"], "lr": settings.dpo_lr,
                         "beta": settings.dpo_beta, "heldout_pairs": len(pairs),
                         "preference": {name: preference_rates(models[name], tokenizer, pairs)
                                        for name in ("tuned", "tuned+dpo")}}
    if settings.rl:
        if not settings.dpo:
            write_pairs(settings, world)

        def evaluate(model_dir: Path) -> dict:
            return evaluate_model(_load(model_dir), tokenizer, sets, stop_ids,
                                  settings.max_new_tokens, end_of_turn)[0]

        agent = None
        if settings.agent_traces:
            agent = (tool_world, lambda model_dir: evaluate_agent_model(model_dir, tokenizer, tool_world, settings,
                                                                        stop_ids))
        report["after_sft"] = after_sft(settings, sft_full, world, heldout_pairs(world, sets, settings.seed),
                                        evaluate, report, settings.online, agent)
        if agent is not None:
            report["tools"]["after_rl"] = report["after_sft"].pop("agent")
    report["seed_example"] = _seed_example(base_model, tuned, tokenizer, stop_ids)
    report["sft"] = {"steps": result.steps, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
                     "kind": "lora" if settings.lora else "full", "train_conversations": settings.sft_per_family
                     * (len(FAMILIES) - len(HELDOUT_FAMILIES))}
    report["heldout_families"] = list(HELDOUT_FAMILIES)
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
    report["settings"]["online"] = report.get("after_sft", {}).get("settings")
    report["seconds"] = time.perf_counter() - started
    write_report(settings.out, report, answers)
    return report


def write_report(out: Path, report: dict, answers: dict[str, list[dict]]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "answers.jsonl").write_text("".join(json.dumps({"model": m, **r}) + "\n"
                                               for m, rows in answers.items() for r in rows))
    plot_families(report, out / "accuracy_by_family.png")
    plot_summary(report, out / "summary.png")
    if (out / "sft" / "loss.png").exists():
        shutil.copy(out / "sft" / "loss.png", out / "sft_loss.png")
    (out / "report.md").write_text(render_markdown(report, answers))
