"""The Data page of ``tuneful ui``: a data file (or dataset id) as training sees it — format, skipped records,
unused fields, conversations token by token with each token's kind, preflight findings, statistics — from
:func:`tuneful.tokenization.view.inspect_data`, the function ``tuneful data inspect`` calls."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..samples import sandbox_base_dir
from ..templates.registry import builtin_names
from ..tokenization.view import KIND_COLOURS, inspect_data, token_kinds
from .page_parts import OWN_TEMPLATE, SANDBOX, chosen_template, failed
from .paths import RootFolder

EXAMPLES_SHOWN = 3


def data_page(root: RootFolder) -> None:
    gr.Markdown("Open a data file (or a Hugging Face dataset id) and see it as training sees it: each conversation "
                "rendered with the template, token by token, the trained tokens highlighted by kind.")
    with gr.Row():
        source = gr.Textbox(label="Data", placeholder="empty: the starter sample shipped with tuneful",
                            elem_id="data-source", scale=3)
        tokenizer = gr.Textbox(label="Tokenizer", placeholder="empty: a tiny tokenizer trained on the starter sample; "
                               "'sandbox': the sandbox model's", elem_id="data-tokenizer", scale=2)
        template = gr.Dropdown([OWN_TEMPLATE, *builtin_names()], value=OWN_TEMPLATE, label="Chat template",
                               allow_custom_value=True, elem_id="data-template", scale=2)
        max_length = gr.Number(label="Max length (tokens)", value=None, precision=0, scale=1)
        start = gr.Number(label="Show from conversation", value=1, minimum=1, precision=0, elem_id="data-first",
                          scale=1)
    with gr.Accordion("Pick a file under the root", open=False):
        picker = gr.FileExplorer(root_dir=root.root, file_count="single", glob="**/*.json*",
                                 ignore_glob="**/.*", label="Data files under the root")
    inspect = gr.Button("Inspect", variant="primary", elem_id="data-inspect")
    message = gr.Markdown(elem_id="data-message")
    examples = [gr.HighlightedText(label=f"Conversation {i + 1} shown", color_map=KIND_COLOURS, show_legend=True,
                                   combine_adjacent=False, elem_id=f"data-example-{i + 1}")
                for i in range(EXAMPLES_SHOWN)]
    findings = gr.Markdown(elem_id="data-findings")
    with gr.Row():
        stats = gr.Dataframe(headers=["statistic", "value"], label="Dataset", interactive=False, elem_id="data-stats")
        lengths = gr.Plot(label="Tokens per training example")

    def pick(path: Any) -> Any:
        return root.relative(path) if path else gr.skip()

    def run(source_text: str, tokenizer_text: str, template_choice: str, limit: float | None,
            first: float | None) -> list[Any]:
        try:
            tokenizer_source = root.source(tokenizer_text, names=(SANDBOX,))
            seen = inspect_data(root.source(source_text),
                                tokenizer=str(sandbox_base_dir()) if tokenizer_source == SANDBOX else tokenizer_source,
                                template=chosen_template(root, template_choice), shown=EXAMPLES_SHOWN,
                                first=max(0, int(first or 1) - 1), max_length=int(limit) if limit else None)
        except Exception as exc:  # the page shows the cause (a refused path, a bad record, a missing file)
            return [failed(exc), *[None] * EXAMPLES_SHOWN, "", None, None]
        report = seen.loaded.report
        skipped = ", ".join(f"{k}: {v}" for k, v in report.skipped_by_reason.items()) or "none"
        head = (f"**{seen.source}** — format `{report.format}`, template `{seen.template.origin}`; "
                f"{report.records_in} records, {len(seen.loaded.conversations)} conversations; skipped: {skipped}")
        if report.ignored_fields:
            head += "\n\nFields this format's loader does not use: " + ", ".join(
                f"`{name}` ({count})" for name, count in report.ignored_fields.most_common(12))
        if report.skipped:
            head += "\n\nSkipped records (first 20):\n" + "\n".join(
                f"- `{where}`: {reason}" for where, reason in report.skipped[:20])
        shown = [[(text, kind) for text, kind in token_kinds(conv, example)] for conv, example in seen.shown]
        shown += [None] * (EXAMPLES_SHOWN - len(shown))
        lines = [f"- {'❌' if f.severity == 'error' else '⚠️'} {f}" for f in seen.report.findings]
        found = "**Preflight**\n" + ("\n".join(lines) if lines else "✅ all checks passed")
        return [head, *shown, found, [list(row) for row in seen.stats.rows()], _histogram(seen.lengths)]

    picker.change(pick, picker, source)
    inspect.click(run, [source, tokenizer, template, max_length, start], [message, *examples, findings, stats, lengths])


def _histogram(lengths: list[int]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#2e7d32")
    ax.set_xlabel("tokens per training example")
    ax.set_ylabel("examples")
    fig.tight_layout()
    plt.close(fig)
    return fig
