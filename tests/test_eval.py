"""tuneful eval: prompt files, judge with position swapping, held-out loss, the report contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuneful.cli.main import app
from tuneful.infer.judge import JudgeSettings, OpenAIJudge, pairwise, parse_verdict
from tuneful.eval.prompts import PromptFileError, load_prompts
from tuneful.eval.runner import heldout_loss
from tuneful.sandbox.evaluation import SandboxTasks

from conftest import FIXTURES, needs_fixtures
from stub_openai import completion, stub_endpoint

CONVS = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]


def test_verdict_parsing_takes_the_last_bracketed_verdict():
    assert parse_verdict("A is fine but [[B]]") == "B"
    assert parse_verdict("first [[A]] then on reflection [[C]]") == "C"
    assert parse_verdict("no verdict") is None


def test_position_swapping_cancels_a_judge_that_always_prefers_the_first_answer():
    result = pairwise(lambda messages: "[[A]]", CONVS, ["x"] * 4, ["y"] * 4)
    assert (result["wins"], result["ties"], result["losses"]) == (0, 4, 0)
    assert result["win_rate"] == 0.5 and result["order_consistency"] == 0.0


def test_a_consistent_judge_gives_wins_and_losses():
    def prefers_good(messages):  # looks only at the content, never at the position
        body = messages[-1]["content"]
        a = body.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
        return "[[A]]" if "good" in a else "[[B]]"

    result = pairwise(prefers_good, CONVS, ["good", "good", "bad", "good"], ["bad", "bad", "good", "bad"])
    assert (result["wins"], result["ties"], result["losses"]) == (3, 0, 1)
    assert result["win_rate"] == 0.75 and result["order_consistency"] == 1.0


def test_unparseable_verdicts_are_ties_and_counted():
    result = pairwise(lambda messages: "I cannot decide.", CONVS[:2], ["x", "x"], ["y", "y"])
    assert result["ties"] == 2 and result["unparsed_verdicts"] == 4


def test_openai_judge_talks_to_any_compatible_endpoint(monkeypatch):
    seen = []

    def judge_reply(body, headers):  # prefers the answer that contains 'good'
        seen.append({"auth": headers.get("Authorization"), "model": body["model"]})
        a = body["messages"][-1]["content"].split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
        return 200, completion(f"Reason.\n{'[[A]]' if 'good' in a else '[[B]]'}", body["model"])

    monkeypatch.setenv("TUNEFUL_TEST_JUDGE_KEY", "judge-key")
    with stub_endpoint(judge_reply) as url:
        judge = OpenAIJudge(JudgeSettings("judge-1", url, "TUNEFUL_TEST_JUDGE_KEY"))
        result = pairwise(judge, CONVS[:2], ["good", "bad"], ["bad", "good"])
        judge.client.close()
    assert (result["wins"], result["losses"]) == (1, 1)
    assert seen[0] == {"auth": "Bearer judge-key", "model": "judge-1"}


def test_prompt_file_errors_name_every_bad_line(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n{"messages": [{"role": "assistant", "content": "x"}]}\n'
                    '{"prompt": "x", "instruction_id_list": ["a"], "kwargs": []}\n')
    with pytest.raises(PromptFileError) as info:
        load_prompts(str(path))
    message = str(info.value)
    assert "3 bad line(s)" in message
    for lineno in (2, 3, 4):
        assert f"p.jsonl:{lineno}" in message


def test_sandbox_prompt_set_has_verifier_checks_and_references():
    prompts = load_prompts("sandbox", tasks=SandboxTasks())
    assert {p.sandbox["set"] for p in prompts} == {"heldout_phrasing", "heldout_family"}
    assert all(p.reference and p.messages[-1]["role"] == "user" for p in prompts)


def test_heldout_loss_is_the_mean_nll_of_the_reference_tokens(sandbox_chat):
    prompts = load_prompts("sandbox", limit=3, tasks=SandboxTasks())
    result = heldout_loss(sandbox_chat, prompts, batch_size=2)
    total, count = 0.0, 0
    for p in prompts:  # by hand: one unpadded forward pass per example
        prompt_len = len(sandbox_chat.prompt_ids(p.messages))
        full = sandbox_chat.tokenizer(sandbox_chat.prompt_text(p.messages) + p.reference + "<|end|>",
                                      add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = sandbox_chat.model(torch.tensor([full])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        for t in range(prompt_len, len(full)):
            total -= float(logp[t - 1, full[t]])
            count += 1
    assert result["tokens"] == count and result["references"] == 3
    assert result["loss"] == pytest.approx(total / count, rel=1e-4)


def _zero_lora_adapter(folder: Path) -> Path:
    """A LoRA adapter on the sandbox base with B = 0: it must answer exactly like the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneful.sandbox.base import shipped_base_dir
    from tuneful.templates.registry import builtin

    base = shipped_base_dir()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = builtin("tuneful").source
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_cli_writes_one_entry_per_model_with_every_applicable_metric(tmp_path: Path):
    adapter = _zero_lora_adapter(tmp_path / "adapter")
    prompts = tmp_path / "prompts.jsonl"
    sandbox = [json.loads(json.dumps({"messages": p.messages, "sandbox": p.sandbox, "reference": p.reference}))
               for p in load_prompts("sandbox", limit=6, tasks=SandboxTasks())]
    ifeval = [{"key": 1, "prompt": "Answer without commas.", "instruction_id_list": ["punctuation:no_comma"],
               "kwargs": [{}]}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in sandbox + ifeval))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--models", f"sandbox,{adapter}", "--prompts", str(prompts),
                                      "--out", str(out), "--max-new-tokens", "16", "--ablate-template", "chatml"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["sandbox", str(adapter), "sandbox [template chatml]",
                                      f"{adapter} [template chatml]"]
    base, tuned = report["models"]["sandbox"], report["models"][str(adapter)]
    for metrics in (base, tuned):
        assert set(metrics) >= {"stop_rate", "sandbox", "ifeval", "heldout_loss", "template"}
        assert metrics["ifeval"]["prompts"] == 1 and metrics["sandbox"]["by_set"]
    # B = 0: the adapter answers exactly like its base.
    assert base["sandbox"] == tuned["sandbox"] and base["heldout_loss"]["loss"] == pytest.approx(
        tuned["heldout_loss"]["loss"], rel=1e-5)
    ablated = report["models"][f"{adapter} [template chatml]"]
    assert ablated["template"] == "builtin:chatml" and "differs" in " ".join(ablated["notes"])
    assert ablated["heldout_loss"]["loss"] != tuned["heldout_loss"]["loss"]
    for name in ("report.md", "summary.png", "heldout_loss.png", "answers.jsonl"):
        assert (out / name).stat().st_size > 0
    markdown = (out / "report.md").read_text()
    assert "## Instruction following" in markdown and "## Template ablation" in markdown
    last = json.loads(result.output.strip().splitlines()[-1])
    assert set(last["models"]) == set(report["models"])


@needs_fixtures
def test_eval_runs_on_the_real_ifeval_prompts(tmp_path: Path):
    out = tmp_path / "ifeval"
    result = CliRunner().invoke(app, ["eval", "--models", "sandbox", "--prompts",
                                      str(FIXTURES / "data" / "ifeval" / "input_data.jsonl"), "--out", str(out),
                                      "--limit", "24", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    ifeval = json.loads((out / "report.json").read_text())["models"]["sandbox"]["ifeval"]
    assert ifeval["prompts"] == 24 and 0.0 <= ifeval["prompt_strict"] <= ifeval["prompt_loose"] <= 1.0
    assert ifeval["instruction_strict"] <= ifeval["instruction_loose"]


def test_eval_refuses_a_judge_with_one_model(tmp_path: Path):
    result = CliRunner().invoke(app, ["eval", "--models", "sandbox", "--prompts", "sandbox", "--out", str(tmp_path),
                                      "--judge-model", "j"])
    assert result.exit_code == 2 and "at least two" in result.output


def test_a_judge_failure_is_named_and_the_answers_are_kept(tmp_path: Path, monkeypatch):
    """A wrong judge key used to end in a traceback with nothing saved (issue 46): the answers and metrics are
    written first, then the failure is named with the fix."""
    from tuneful.eval.runner import EvalSettings, JudgeError, run_eval
    from tuneful.infer.judge import JudgeSettings

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Say hi.", "Name a colour.")))
    monkeypatch.setenv("TUNEFUL_TEST_JUDGE_KEY", "wrong-key")
    unauthorised = (401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
    with stub_endpoint(lambda body, headers: unauthorised) as url:
        settings = EvalSettings(models=["sandbox", "sandbox"], names=["base", "again"], prompts=str(prompts),
                                out=tmp_path / "out", max_new_tokens=4, progress=False, device="cpu",
                                judge=JudgeSettings("judge-1", url, "TUNEFUL_TEST_JUDGE_KEY"))
        with pytest.raises(JudgeError, match=r"judge-1 .* failed: AuthenticationError.*TUNEFUL_TEST_JUDGE_KEY"):
            run_eval(settings)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["judge"]["error"].startswith("AuthenticationError") and set(report["models"]) == {"base", "again"}
    assert len((tmp_path / "out" / "answers.jsonl").read_text().splitlines()) == 4
    assert "The judge failed" in (tmp_path / "out" / "report.md").read_text()
