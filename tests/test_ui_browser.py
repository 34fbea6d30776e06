"""``tuneful ui`` in a real headless Chromium (Debian's, driven by Playwright): the pages against the real package.

The server is started as a user would (``tuneful ui --port P --root DIR``). Screenshots of each page go to
``test-artifacts/ui/`` (or ``$TUNEFUL_ARTIFACTS/ui``). Without a browser the tests skip with the reason, except
in CI (``CI`` set), where ``.ci/run`` installs one and a missing browser is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from tiny import free_port
from tuneful.samples import starter_path

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TUNEFUL_ARTIFACTS", REPO / "test-artifacts")) / "ui"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = "no chromium on PATH (apt-get install chromium)" if path is None else None
    if importlib.util.find_spec("playwright") is None:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    return path


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """(url, root, the first stdout line) of a ``tuneful ui`` process serving a fresh root folder."""
    root = tmp_path_factory.mktemp("ui-root")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tuneful.cli.main", "ui", "--port", str(port), "--root", str(root)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)
    before = []
    for line in process.stdout:  # until the UI serves (or the process ends)
        if line.startswith("Running on"):
            break
        before.append(line)
    else:
        line = ""
    first = line.strip()
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep the pipe drained
    try:
        assert first == f"Running on http://127.0.0.1:{port}", first + "".join(before)
        yield f"http://127.0.0.1:{port}/", root, first
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(ui_server):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(ui_server[0])
        yield tab
        browser.close()


def _text_of(page, selector: str) -> str:
    return page.inner_text(selector)


def _wait_text(page, selector: str, *needles: str, timeout_s: float = 60) -> str:
    """Wait until the element's text holds one of ``needles``; returns that text."""
    page.wait_for_function(
        "([sel, needles]) => { const e = document.querySelector(sel); return e && needles.some(n => e.innerText.includes(n)); }",
        arg=[selector, list(needles)], timeout=timeout_s * 1000)
    return _text_of(page, selector)


def _field(page, elem_id: str) -> str:
    return f"#{elem_id} textarea, #{elem_id} input"


def test_ui_serves_on_loopback(ui_server):
    url, _, first = ui_server
    assert first.startswith("Running on http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200


def test_data_page_highlights_the_trained_tokens(page):
    page.get_by_role("tab", name="Data").click()
    page.click("#data-inspect")
    _wait_text(page, "#data-findings", "Preflight")
    first = json.loads(starter_path().read_text().splitlines()[0])["messages"]
    reply = next(m["content"] for m in first if m["role"] == "assistant")
    labelled = page.locator("#data-example-1 .token .text:not(.unlabeled)").all_inner_texts()
    untrained = "".join(page.locator("#data-example-1 .token .text.unlabeled").all_inner_texts())
    assert "".join(labelled) == reply + "<|im_end|>"  # exactly the reply and its end-of-turn token are trained
    assert first[0]["content"] in untrained.replace("\n", "")  # the prompt is shown, not trained
    assert "trained: tool call" in _text_of(page, "#data-example-1")  # the legend names every kind
    assert "records read" in _text_of(page, "#data-stats")
    page.screenshot(path=str(ARTIFACTS / "data.png"), full_page=True)


def test_data_page_lists_skipped_records_with_their_reasons(page, ui_server):
    root = ui_server[1]
    lines = starter_path().read_text().splitlines()
    (root / "broken.jsonl").write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    page.get_by_role("tab", name="Data").click()
    page.fill(_field(page, "data-source"), "broken.jsonl")
    page.click("#data-inspect")
    message = _wait_text(page, "#data-message", "Skipped records")
    assert "skipped: invalid_json: 1" in message and "broken.jsonl:2" in message
    page.fill(_field(page, "data-source"), "")


def test_paths_outside_the_root_are_refused(page, ui_server):
    page.get_by_role("tab", name="Data").click()
    page.fill(_field(page, "data-source"), "/etc/passwd")
    page.click("#data-inspect")
    assert "outside the UI's root folder" in _wait_text(page, "#data-message", "outside", "❌")
    page.fill(_field(page, "data-source"), "")
    page.get_by_role("tab", name="Train").click()
    page.fill(_field(page, "train-recipe-path"), "../../etc/hosts")
    page.click("#train-load")
    assert "outside the UI's root folder" in _wait_text(page, "#train-loaded", "outside", "❌")
    page.screenshot(path=str(ARTIFACTS / "refused.png"), full_page=True)


def test_recipe_loads_into_the_form_and_saves(page, ui_server):
    root = ui_server[1]
    (root / "recipes").mkdir(exist_ok=True)
    (root / "recipes" / "mine.yaml").write_text("model:\n  name_or_path: base\ndata:\n  train: data.jsonl\n"
                                                "train:\n  lr: 0.0005\n  output_dir: runs/mine\n")
    page.get_by_role("tab", name="Train").click()
    page.fill(_field(page, "train-recipe-path"), "recipes/mine.yaml")
    page.click("#train-load")
    _wait_text(page, "#train-loaded", "loaded recipes/mine.yaml")
    page.wait_for_function("document.querySelector('#setting-train-lr input, #setting-train-lr textarea').value === '0.0005'",
                           timeout=30_000)
    page.fill(_field(page, "setting-train-epochs"), "2")
    page.fill(_field(page, "train-save-path"), "recipes/saved.yaml")
    page.click("#train-save")
    _wait_text(page, "#train-problems", "saved", "❌")
    saved = yaml.safe_load((root / "recipes" / "saved.yaml").read_text())
    assert saved["train"]["lr"] == 0.0005 and saved["train"]["epochs"] == 2.0
    assert saved["model"]["name_or_path"] == "base" and saved["data"]["train"] == "data.jsonl"
    assert "epochs: 2.0" in page.inner_text("#train-yaml")  # the resulting YAML is shown
    page.fill(_field(page, "train-save-path"), "/tmp/outside.yaml")
    page.click("#train-save")
    assert "outside the UI's root folder" in _wait_text(page, "#train-problems", "outside")


def test_form_shows_every_problem_by_setting(page):
    page.get_by_role("tab", name="Train").click()
    page.reload()  # the form back to its defaults
    page.get_by_role("tab", name="Train").click()
    page.fill(_field(page, "setting-train-lr"), "fast")
    page.click("#train-check")
    problems = _wait_text(page, "#train-problems", "problem")
    assert "train.lr" in problems and "expected float" in problems
    assert "model.name_or_path" in problems and "data.train" in problems  # all at once
    assert "expected float, got 'fast'" in _wait_text(page, "#setting-train-lr", "expected float")  # beside the field
    assert "required" in _text_of(page, "#setting-data-train")
    assert "Peak learning rate" not in _text_of(page, "#setting-train-lr")
    page.fill(_field(page, "setting-train-lr"), "0.001")
    page.click("#train-check")
    assert "Peak learning rate" in _wait_text(page, "#setting-train-lr", "Peak learning rate")  # fixed: help again


def test_first_time_user_trains_watches_compares_and_evaluates(page, ui_server):
    url, root, _ = ui_server
    page.get_by_role("tab", name="Train").click()
    page.click("#train-sandbox")
    _wait_text(page, "#train-loaded", "wrote", timeout_s=120)
    assert (root / "sandbox-sft" / "sft.yaml").exists()
    # the form is drawn again from the loaded recipe: launching before that would launch the old form's values
    page.wait_for_function("(() => { const e = document.querySelector('#setting-data-train input, #setting-data-train "
                           "textarea'); return e && e.value.includes('sandbox-sft'); })()", timeout=60_000)
    page.click("#train-launch")
    try:
        _wait_text(page, "#train-problems", "started", timeout_s=60)
    except Exception as exc:  # the form's problems say why it did not start
        raise AssertionError(_text_of(page, "#train-problems")) from exc
    _wait_text(page, "#train-status", "running", "finished", "failed", timeout_s=60)
    page.screenshot(path=str(ARTIFACTS / "train-running.png"), full_page=True)
    status = _wait_text(page, "#train-status", "finished", "failed", "ended", timeout_s=300)
    assert "finished" in status, status + _text_of(page, "#train-log")
    rows = [json.loads(line) for line in (root / "sandbox-sft" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert f"step {rows[-1]['step']}" in status
    page.wait_for_selector("#train-curve canvas, #train-curve svg", timeout=30_000)
    page.locator("#train-curve").screenshot(path=str(ARTIFACTS / "train-curve.png"))
    page.screenshot(path=str(ARTIFACTS / "train-finished.png"), full_page=True)

    page.reload()  # the run is read back from its folder: a reload shows it again
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("document.querySelector('#train-watch textarea, #train-watch input').value.includes('sandbox-sft')",
                           timeout=30_000)
    assert "finished" in _wait_text(page, "#train-status", "finished", timeout_s=30)

    page.get_by_role("tab", name="Runs").click()
    page.click("#runs-refresh")
    assert "sandbox-sft/sft" in _wait_text(page, "#runs-table", "sandbox-sft", timeout_s=30)
    assert "finished" in _text_of(page, "#runs-table")
    page.get_by_label("sandbox-sft/sft", exact=True).check()
    page.wait_for_selector("#runs-curves canvas, #runs-curves svg", timeout=30_000)
    page.click("#runs-detail input")
    page.get_by_role("option", name="sandbox-sft/sft", exact=True).click()
    assert "name_or_path" in _wait_text(page, "#runs-settings", "name_or_path", timeout_s=30)
    page.wait_for_selector("#runs-plot img", timeout=30_000)  # the run's loss.png
    page.screenshot(path=str(ARTIFACTS / "runs.png"), full_page=True)

    page.get_by_role("tab", name="Chat").click()
    for box, model in (("chat-model-a", "sandbox"), ("chat-model-b", "sandbox-sft/sft/model")):
        page.fill(f"#{box} input", model)
        page.press(f"#{box} input", "Enter")
    page.fill(_field(page, "chat-message"), "What is the capital of Denoland?")
    page.click("#chat-send")
    page.wait_for_function("document.querySelectorAll('#chat-a .message').length >= 2 && "
                           "document.querySelectorAll('#chat-b .message').length >= 2", timeout=120_000)
    page.wait_for_function("!document.querySelector('#chat-b').innerText.includes('…')", timeout=120_000)
    for side in ("#chat-a", "#chat-b"):
        bubbles = page.locator(f"{side} .message").all_inner_texts()
        assert "What is the capital of Denoland?" in bubbles[0]
        assert bubbles[-1].strip() and not bubbles[-1].startswith("error")
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("sandbox-sft/sft/model").check()  # the models found under the root fill the box
    page.get_by_label("sandbox", exact=True).check()
    page.wait_for_function("document.querySelector('#eval-models textarea, #eval-models input').value.includes(',')",
                           timeout=30_000)
    assert set(page.input_value(_field(page, "eval-models")).split(", ")) == {"sandbox", "sandbox-sft/sft/model"}
    page.fill(_field(page, "eval-models"), "sandbox, sandbox-sft/sft/model")
    page.fill(_field(page, "eval-names"), "base, tuned")
    page.fill("#eval-limit input", "6")
    page.click("#eval-run")
    status = _wait_text(page, "#eval-status", "finished", "failed", timeout_s=300)
    assert "finished" in status, status + _text_of(page, "#eval-log")
    _wait_text(page, "#eval-report", "Held-out loss", timeout_s=30)
    page.wait_for_selector("#eval-plot img", timeout=30_000)
    page.wait_for_selector("#eval-loss-plot img", timeout=30_000)
    answers = _text_of(page, "#eval-answers")
    assert "base" in answers and "tuned" in answers
    report = json.loads((root / "evals" / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"base", "tuned"} and report["prompts"]["count"] == 6
    page.screenshot(path=str(ARTIFACTS / "evaluate.png"), full_page=True)
