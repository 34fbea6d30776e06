"""What curation did, for a person: report.md with counts per stage, lengths, coverage, examples; PNGs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from .config import CurateSettings
from .pipeline import STAGES, CurationResult, Record, tokens
from .select import default_clusters, kmeans


def write_outputs(result: CurationResult, out: Path) -> Path:
    """OUT.jsonl (kept, canonical records) and OUT.rejected.jsonl (record + stage + reason)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r.conversation.to_json(), ensure_ascii=False) + "\n" for r in result.kept),
                   encoding="utf-8")
    rejected = rejected_path(out)
    rejected.write_text("".join(json.dumps({**r.record, "stage": r.stage, "reason": r.reason}, ensure_ascii=False)
                                + "\n" for r in result.rejected), encoding="utf-8")
    return rejected


def rejected_path(out: Path) -> Path:
    return out.with_name(out.name[: -len(out.suffix)] + ".rejected" + out.suffix if out.suffix else out.name
                         + ".rejected.jsonl")


GROUP_KEYS = ("family", "task", "category", "source")  # meta fields naming a record's task
LABEL_KEYS = ("noise", "label", "correct")  # meta fields holding a known quality label (never a curation signal)


def _meta_value(record: dict | Record, keys: tuple[str, ...], named: bool) -> str | None:
    meta = record.conversation.meta if isinstance(record, Record) else record.get("meta", {})
    for key in keys:
        if isinstance(meta, dict) and key in meta:
            return f"{key}={meta[key]}" if named else str(meta[key])
    return None


def mix(result: CurationResult, keys: tuple[str, ...], named: bool = False) -> tuple[Counter, Counter]:
    """Records per value of the first of ``keys`` found in each record's meta (as ``key=value`` when
    ``named``): (input, kept)."""
    kept = Counter(v for v in (_meta_value(r, keys, named) for r in result.kept) if v)
    removed = Counter(v for v in (_meta_value(r.record, keys, named) for r in result.rejected) if v)
    return kept + removed, kept


def coverage(result: CurationResult, settings: CurateSettings) -> dict | None:
    """Cluster occupancy of the embedded records before and after (clusters fitted on all of them)."""
    if result.embeddings is None or len(result.embedded) < 2:
        return None
    k = settings.clusters or default_clusters(len(result.embedded))
    labels = kmeans(result.embeddings, k, settings.seed)
    label_of = dict(zip(result.embedded, labels.tolist()))
    before = Counter(label_of.values())
    after = Counter(label_of[r.index] for r in result.kept if r.index in label_of)
    return {"clusters": k, "covered_before": len(before), "covered_after": len(after),
            "before": {int(c): n for c, n in sorted(before.items())},
            "after": {int(c): after.get(c, 0) for c in sorted(before)}}


def _plot(result: CurationResult, folder: Path, cov: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    counts = result.rejected_by_stage()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = ["kept"] + [s for s in STAGES if s in counts]
    ax.bar(labels, [len(result.kept)] + [counts[s] for s in labels[1:]], color=["tab:green"] + ["tab:red"] * len(counts))
    ax.set_ylabel("records")
    ax.set_title(f"{result.records_in} records in: kept and removed by stage")
    fig.tight_layout()
    fig.savefig(folder / "stages.png", dpi=110)
    plt.close(fig)
    names.append("stages.png")

    before = [tokens(r.record["messages"][-1]["content"]) for r in result.rejected if "messages" in r.record]
    after = [tokens(r.response) for r in result.kept]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    top = max(before + after + [1])
    bins = np.linspace(0, top, 30)
    ax.hist([after, before], bins=bins, stacked=True, label=["kept", "removed"], color=["tab:green", "tab:red"])
    ax.set_xlabel("response length (words and symbols)")
    ax.set_ylabel("records")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "lengths.png", dpi=110)
    plt.close(fig)
    names.append("lengths.png")

    if cov:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        xs = np.arange(len(cov["before"]))
        total_before, total_after = sum(cov["before"].values()), max(1, sum(cov["after"].values()))
        ax.bar(xs - 0.2, [v / total_before for v in cov["before"].values()], width=0.4, label="input")
        ax.bar(xs + 0.2, [v / total_after for v in cov["after"].values()], width=0.4, label="kept")
        ax.set_xlabel("embedding cluster")
        ax.set_ylabel("share of records")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "coverage.png", dpi=110)
        plt.close(fig)
        names.append("coverage.png")
    return names


def write_report(result: CurationResult, settings: CurateSettings, folder: Path, *, source: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    cov = coverage(result, settings)
    plots = _plot(result, folder, cov)
    counts = result.rejected_by_stage()
    groups_before, groups_after = mix(result, GROUP_KEYS)
    labels_before, labels_after = mix(result, LABEL_KEYS, named=True)
    summary = {"source": source, "records_in": result.records_in, "kept": len(result.kept),
               "rejected_by_stage": counts, "seconds_by_stage": result.seconds_by_stage,
               "judge_unrated": result.judge_unrated, "taken_back": result.taken_back, "coverage": cov,
               "groups_before": dict(groups_before), "groups_after": dict(groups_after),
               "labels_before": dict(labels_before), "labels_after": dict(labels_after)}
    (folder / "report.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Curation of `{source}`", "", f"{result.records_in} records in, **{len(result.kept)} kept**.", "",
             "| stage | removed | seconds |", "|---|---:|---:|"]
    for stage in STAGES:
        lines.append(f"| {stage} | {counts.get(stage, 0)} | {result.seconds_by_stage.get(stage, 0.0):.2f} |")
    if any(result.taken_back.values()):
        lines += ["", f"Groups short of distinct records took back {result.taken_back['near/semantic']} near/semantic "
                      f"duplicates and repeated records with {result.taken_back['exact copies']} of their exact copies "
                      "to fill their quotas (`repeat_to_quota`); those are counted as kept, not removed."]
    if result.judge_unrated:
        lines += ["", f"The judge gave no rating for {result.judge_unrated} records (failed requests or no number); "
                      "they were kept unscored."]
    if cov:
        lines += ["", f"Embedding clusters: {cov['clusters']}; covered by the input {cov['covered_before']}, by the "
                      f"kept records {cov['covered_after']}."]
    if groups_before:
        lines += ["", "| task / category (from the records' meta) | input | kept |", "|---|---:|---:|"]
        lines += [f"| {g} | {n} | {groups_after.get(g, 0)} |" for g, n in sorted(groups_before.items())]
    if labels_before:
        n_in, n_kept = max(1, sum(labels_before.values())), max(1, sum(labels_after.values()))
        lines += ["", "Known labels in the records' meta (described here, never used by the curation):", "",
                  "| label | share of the input | share of the kept |", "|---|---:|---:|"]
        lines += [f"| {g} | {n / n_in:.1%} | {labels_after.get(g, 0) / n_kept:.1%} |"
                  for g, n in sorted(labels_before.items())]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Examples of removed records", ""]
    for stage in STAGES:
        shown = [r for r in result.rejected if r.stage == stage][:3]
        for r in shown:
            text = json.dumps(r.record.get("messages", r.record), ensure_ascii=False)[:160]
            lines.append(f"- **{stage}** — {r.reason}: `{text}`")
    lines += ["", "Every removed record, with its stage and reason, is in the `.rejected.jsonl` file."]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
