"""``tuneful eval``: several models, one prompt set, one report.

Every model answers the same prompts (batched generation with the KV cache, each model with its
own saved template unless told otherwise), then each metric that the prompts support is computed:
IFEval instruction checks, sandbox task verifiers, held-out loss on reference replies, stop rate,
and, with a judge, pairwise win rate against the first model. With ``tools`` every prompt is a
multi-turn episode whose calls are run (end-to-end task success, valid calls, calls per task,
recovery after a failed call). ``ablate_template`` evaluates each model a second time with another
template, to show what a template mismatch costs.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.tool_parsers import PARSERS, ParsedReply
from ..infer.chat_model import ChatModel, load_chat_model
from ..infer.episodes import run_episodes
from ..infer.generate import generate
from ..infer.tools import Tools, load_tools
from ..infer.judge import JudgeSettings, OpenAIJudge, pairwise
from ..models.losses import token_nll_sum
from ..models.seq2seq import Seq2SeqTokenLoss
from ..tokenization.batching import Example, collate_padded
from ..tokenization.masking import ConversationTokenizer, labels_from_mask
from ..tokenization.seq2seq import Seq2SeqExample, Seq2SeqTokenizer, collate_seq2seq
from .ifeval import check_record, summarize
from .lm_harness import lm_eval_scores
from .prompts import EvalPrompt, TaskSuite, load_prompts
from .report import write_report


@dataclass
class EvalSettings:
    models: list[str]  # MODEL specs: folders, hub ids, adapter folders or "sandbox"
    prompts: str  # a JSONL prompt file, or "sandbox"
    out: Path
    template: str | None = None  # force one template for every model (default: each model's own)
    ablate_template: str | None = None  # also evaluate every model with this template
    max_new_tokens: int = 256
    batch_size: int = 16
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    limit: int | None = None  # first N prompts only
    judge: JudgeSettings | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    progress: bool = True
    names: list[str] = field(default_factory=list)  # report names; default: the specs
    lm_eval_tasks: list[str] = field(default_factory=list)  # lm-evaluation-harness tasks run on every model
    lm_eval_include: str | None = None  # a folder of lm-eval task YAML files (local tasks)
    lm_eval_chat_template: bool = True  # lm-eval prompts go through the model's chat template
    tasks: TaskSuite | None = None  # verifies prompts with a ``sandbox`` check; its name as --prompts: its held-out set
    tools: Path | None = None  # a Python file of tools: every prompt is an episode whose calls are run until it answers
    max_turns: int = 5  # model turns in an episode (with tools)

    def __post_init__(self) -> None:
        errors = []
        if not self.models:
            errors.append("--models: name at least one model")
        if len(set(self.models)) != len(self.models) and not self.names:
            errors.append("--models: a model is listed twice")
        if self.names and len(self.names) != len(self.models):
            errors.append(f"--names: {len(self.names)} names for {len(self.models)} models")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            errors.append("--max-new-tokens and --batch-size must be at least 1")
        if self.temperature < 0:
            errors.append("--temperature must be >= 0")
        if self.tools is not None and not Path(self.tools).is_file():
            errors.append(f"--tools {self.tools}: no such file")
        if self.max_turns < 1:
            errors.append("--max-turns must be at least 1")
        if self.judge is not None and len(self.models) < 2:
            errors.append("--judge-model compares models pairwise; name at least two in --models")
        if errors:
            raise ValueError("; ".join(errors))


def _stopped(chat: ChatModel, stop_token: int | None) -> bool:
    """Ended its turn: closed with the template's end-of-turn token (EOS only when the template has none).

    A base model that ends the *document* with EOS under a template whose turns end with another
    token has not learned to end a turn.
    """
    ends = chat.end_of_turn_ids or [chat.tokenizer.eos_token_id]
    return stop_token is not None and stop_token in ends


def answer_all(chat: ChatModel, prompts: list[EvalPrompt], settings: EvalSettings, label: str) -> list[dict]:
    outputs = generate(chat.model, chat.tokenizer, [chat.prompt_ids(p.messages, p.tools) for p in prompts],
                       stop_ids=chat.stop_ids, max_new_tokens=settings.max_new_tokens,
                       batch_size=settings.batch_size, do_sample=settings.temperature > 0,
                       temperature=settings.temperature or 1.0, seed=settings.seed,
                       progress=label if settings.progress else None)
    rows = [{"id": p.id, "answer": out.text, "tokens": len(out.token_ids), "stopped": _stopped(chat, out.stop_token)}
            for p, out in zip(prompts, outputs)]
    for p, out, row in zip(prompts, outputs, rows):
        if p.expected_calls is not None:  # a call marker may be a special token: parse the text with them kept
            row["raw"] = chat.tokenizer.decode(out.token_ids, skip_special_tokens=False)
    return rows


def answer_episodes(chat: ChatModel, prompts: list[EvalPrompt], settings: EvalSettings, tools: Tools) -> list[dict]:
    """Every prompt as an episode (:mod:`tuneful.infer.episodes`): the model's calls are run with ``tools`` (their
    schemas offered unless the prompt brings its own) until it answers; the answer is the final turn's text."""
    parser = PARSERS.get(chat.tool_parser or "")
    if parser is None:
        raise ValueError(f"--tools: the template {chat.template.origin} prints no tool calls tuneful can parse; "
                         "evaluate with a tool-capable template (--template chatml, or the model's own)")
    episodes = run_episodes(chat.model, chat.tokenizer, chat, prompts, range(len(prompts)), tools, parser,
                            max_turns=settings.max_turns, max_new_tokens=settings.max_new_tokens,
                            batch_size=settings.batch_size, do_sample=settings.temperature > 0,
                            temperature=settings.temperature or 1.0, seed=settings.seed)
    return [{"id": p.id, "answer": e.final, "tokens": sum(len(t.ids) for t in e.turns),
             "stopped": e.answered and e.turns[-1].stopped, "raw": e.turns[0].text, "turns": len(e.turns),
             "calls": e.calls, "failed_calls": e.failed_calls, "transcript": e.messages}
            for p, e in zip(prompts, episodes)]


def score_episodes(prompts: list[EvalPrompt], rows: list[dict]) -> dict[str, Any]:
    """BFCL-style end-to-end numbers: task success (the final answer holds the prompt's ``answer``), valid calls,
    calls per task, and how often a task whose call failed (it did not parse, or its tool answered an error) was
    still solved."""
    judged = [(p, r) for p, r in zip(prompts, rows) if p.answer is not None]
    for p, r in judged:
        r["correct"] = p.answer.lower() in r["answer"].lower()
    calls = sum(r["calls"] for r in rows)
    failed = [r for _, r in judged if r["failed_calls"]]
    return {"tasks": len(rows), "task_success": sum(r["correct"] for _, r in judged) / len(judged) if judged else None,
            "valid_call_rate": 1 - sum(r["failed_calls"] for r in rows) / calls if calls else None,
            "calls_per_task": calls / len(rows), "turns_per_task": sum(r["turns"] for r in rows) / len(rows),
            "answered": sum(r["stopped"] for r in rows) / len(rows),
            "tasks_with_a_failed_call": len(failed),
            "recovered_after_a_failed_call": sum(r["correct"] for r in failed) / len(failed) if failed else None}


def heldout_loss(chat: ChatModel, prompts: list[EvalPrompt], batch_size: int) -> dict | None:
    """Mean NLL per reference-reply token (the trained tokens of the final assistant turn), and perplexity."""
    import torch

    scored = [p for p in prompts if p.reference is not None]
    if not scored:
        return None
    if chat.encoder_decoder:
        return _seq2seq_heldout_loss(chat, scored, batch_size)
    ctok = ConversationTokenizer(chat.tokenizer, chat.template, last_turn_only=True)
    examples = []
    for p in scored:
        encoded = ctok(p.messages + [{"role": "assistant", "content": p.reference}])  # the last turn: in context
        ids = encoded.input_ids[: chat.context_length]
        examples.append(Example(ids, labels_from_mask(ids, encoded.train_mask[: len(ids)])))
    examples.sort(key=len)
    total, count = 0.0, 0
    pad = chat.pad_id
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(chat.device) for k, v in collate_padded(examples[start : start + batch_size], pad).items()}
            logits = chat.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll, n = token_nll_sum(logits.float(), batch["labels"])
            total, count = total + float(nll), count + n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "references": len(scored)}


def _seq2seq_heldout_loss(chat: ChatModel, scored: list[EvalPrompt], batch_size: int) -> dict:
    """The same for an encoder-decoder model: the prompt is the encoder's input, the reference + EOS the target,
    scored by SFT's seq2seq loss."""
    import torch

    targets = Seq2SeqTokenizer(chat.tokenizer, chat.template)
    examples = sorted((Seq2SeqExample(chat.prompt_ids(p.messages, p.tools), targets.encode_target(p.reference))
                       for p in scored), key=len)
    loss_of = Seq2SeqTokenLoss(chat.model)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate_seq2seq(examples[start : start + batch_size], chat.pad_id)
            nll, n = loss_of(**{k: v.to(chat.device) for k, v in batch.items()})
            total, count = total + float(nll), count + int(n)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "references": len(scored)}


def score(chat: ChatModel, prompts: list[EvalPrompt], answers: list[dict], tasks: TaskSuite | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"answers": len(answers), "stop_rate": sum(a["stopped"] for a in answers) / len(answers)}
    ifeval_results = []
    for p, a in zip(prompts, answers):
        if p.ifeval:
            result = check_record(p.ifeval, a["answer"])
            a["ifeval_strict"], a["ifeval_loose"] = all(result.strict), all(result.loose)
            ifeval_results.append(result)
        if p.sandbox:
            if tasks is None:
                raise ValueError(f"prompt {p.id} has a sandbox check but no task suite verifies it; set "
                                 "EvalSettings.tasks=tuneful.sandbox.tasks.SandboxTasks() (the CLI does)")
            a["correct"] = bool(tasks.verify(p.sandbox, a["answer"]))
    if ifeval_results:
        metrics["ifeval"] = summarize(ifeval_results)
    tool_rows = [(p, a) for p, a in zip(prompts, answers) if p.expected_calls is not None]
    if tool_rows:
        metrics["tools"] = score_tool_use(chat, tool_rows)
    sandbox = [(p, a) for p, a in zip(prompts, answers) if p.sandbox]
    if sandbox:
        def accuracy(rows: list) -> float:
            return sum(a["correct"] for _, a in rows) / len(rows)

        families = sorted({p.sandbox["family"] for p, _ in sandbox})
        sets = sorted({p.sandbox.get("set", "all") for p, _ in sandbox})
        metrics["sandbox"] = {
            "accuracy": accuracy(sandbox),
            "by_set": {s: accuracy([r for r in sandbox if r[0].sandbox.get("set", "all") == s]) for s in sets},
            "by_family": {f: accuracy([r for r in sandbox if r[0].sandbox["family"] == f]) for f in families},
        }
    return metrics


def _normalised(value: Any) -> Any:
    """JSON values compared as values: 1 == 1.0, keys in any order (BFCL's AST check in spirit)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _call_key(name: str, arguments: Any) -> str:
    import json

    return json.dumps([name, _normalised(arguments)], sort_keys=True)


def score_tool_use(chat: ChatModel, rows: list[tuple[EvalPrompt, dict]]) -> dict[str, Any]:
    """Call accuracy (every expected call made, names exact, arguments equal as JSON values, nothing more;
    order free), no-call accuracy where no tool is needed, and the rate of calls that do not parse."""

    parser = PARSERS.get(chat.tool_parser or "")
    call_hits, call_total, quiet_hits, quiet_total, failures = 0, 0, 0, 0, 0
    for p, a in rows:
        reply = parser.parse(a["raw"]) if parser else ParsedReply(a["answer"])
        made = sorted(_call_key(c.name, c.arguments) for c in reply.tool_calls)
        wanted = sorted(_call_key(c["name"], c["arguments"]) for c in p.expected_calls)
        a["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
        a["tool_call_correct"] = made == wanted
        failures += reply.failed
        if wanted:
            call_total, call_hits = call_total + 1, call_hits + (made == wanted)
        else:
            quiet_total, quiet_hits = quiet_total + 1, quiet_hits + (not made)
    return {"call_accuracy": call_hits / call_total if call_total else None,
            "no_call_accuracy": quiet_hits / quiet_total if quiet_total else None,
            "parse_failure_rate": failures / len(rows), "prompts": len(rows), "parser": chat.tool_parser}


def _free(chat: ChatModel) -> None:
    chat.model = None
    gc.collect()


def _runs(settings: EvalSettings) -> list[tuple[str, str, str | None]]:
    """(report name, model spec, template) for every evaluation, ablations after the models."""
    names = settings.names or settings.models
    runs = [(name, spec, settings.template) for name, spec in zip(names, settings.models)]
    if settings.ablate_template:
        runs += [(f"{name} [template {settings.ablate_template}]", spec, settings.ablate_template)
                 for name, spec in zip(names, settings.models)]
    return runs


def run_eval(settings: EvalSettings) -> dict[str, Any]:
    started = time.perf_counter()
    prompts = load_prompts(settings.prompts, limit=settings.limit, seed=settings.seed, tasks=settings.tasks)
    tools = load_tools(settings.tools) if settings.tools is not None else None
    models: dict[str, Any] = {}
    answers: dict[str, list[dict]] = {}
    for name, spec, template in _runs(settings):
        t0 = time.perf_counter()
        chat = load_chat_model(spec, template=template, trust_remote_code=settings.trust_remote_code,
                               device=settings.device)
        if tools:
            rows = answer_episodes(chat, prompts, settings, tools)
            metrics = score(chat, prompts, rows, settings.tasks) | {"episodes": score_episodes(prompts, rows)}
        else:
            rows = answer_all(chat, prompts, settings, name)
            metrics = score(chat, prompts, rows, settings.tasks)
        loss = heldout_loss(chat, prompts, settings.batch_size)
        if loss is not None:
            metrics["heldout_loss"] = loss
        if settings.lm_eval_tasks:
            metrics["lm_eval"] = lm_eval_scores(chat, settings.lm_eval_tasks, include_path=settings.lm_eval_include,
                                                limit=settings.limit, batch_size=settings.batch_size,
                                                apply_chat_template=settings.lm_eval_chat_template, seed=settings.seed)
        seconds = time.perf_counter() - t0
        generated = sum(r["tokens"] for r in rows)
        metrics.update(model=spec, template=chat.template.origin, notes=chat.notes, seconds=seconds,
                       generated_tokens=generated, generated_tokens_per_second=generated / max(seconds, 1e-9))
        models[name], answers[name] = metrics, rows
        _free(chat)
    report: dict[str, Any] = {"models": models, "prompts": {"source": settings.prompts, "count": len(prompts)},
                              "settings": _settings_record(settings)}
    if settings.judge is not None:
        report["seconds"] = time.perf_counter() - started
        write_report(settings.out, report, prompts, answers)  # the answers are kept whatever the judge does
        try:
            report["judge"] = judge_all(settings, prompts, answers)
        except Exception as exc:  # noqa: BLE001 - the client's own error (auth, connection, model) is named
            report["judge"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            write_report(settings.out, report, prompts, answers)
            raise JudgeError(f"the judge ({settings.judge.model} at {settings.judge.base_url}) failed: "
                             f"{report['judge']['error']}. The answers and every other metric are saved in "
                             f"{settings.out}; check --judge-base-url and the key in ${settings.judge.api_key_env}, "
                             "or run without --judge-model") from exc
        for name, result in report["judge"]["pairs"].items():
            models[name]["judge_win_rate"] = result["win_rate"]
    report["seconds"] = time.perf_counter() - started
    write_report(settings.out, report, prompts, answers)
    return report


class JudgeError(RuntimeError):
    """The judge could not be asked; the report without it is already written."""


def judge_all(settings: EvalSettings, prompts: list[EvalPrompt], answers: dict[str, list[dict]]) -> dict[str, Any]:
    """Every other evaluated model against the first one, judged in both orders."""
    assert settings.judge is not None
    ask = OpenAIJudge(settings.judge)
    names = list(answers)
    baseline = names[0]
    conversations = [p.messages for p in prompts]
    pairs = {}
    for name in names[1:]:
        pairs[name] = pairwise(ask, conversations, [a["answer"] for a in answers[name]],
                               [a["answer"] for a in answers[baseline]])
    return {"baseline": baseline, "judge_model": settings.judge.model, "pairs": pairs}


def _settings_record(settings: EvalSettings) -> dict[str, Any]:
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items() if k not in ("judge", "tasks")}
    record["tasks"] = settings.tasks.name if settings.tasks is not None else None
    if settings.judge is not None:  # the key's *variable name* only; the key never reaches a report
        record["judge"] = {"model": settings.judge.model, "base_url": settings.judge.base_url,
                           "api_key_env": settings.judge.api_key_env}
    return record
