"""OpenAssistant data in its three shapes: export trees (``message_tree_id`` + ``prompt``), bare
message trees (a root message with nested ``replies``), and the flat rows of the ``oasst1`` /
``oasst2`` datasets (one message per row, linked by ``parent_id``), assembled into trees across the
whole file or dataset.

A conversation is a root-to-leaf path (all of them, or the best-ranked reply at each step). Deleted
messages, messages whose review failed and messages in another language than ``--lang`` are
pruned with their subtrees and counted by reason: in trees as notes of the load, in flat rows as
skipped rows (a row is a record there).
"""

from __future__ import annotations

from typing import Any, Iterator

from .fields import TrackedRecord
from .messages import Conversion
from .types import Message, RecordError, make_message

ROLES = {"prompter": "user", "assistant": "assistant"}


def is_oasst_node(record: dict) -> bool:
    """A bare tree: a root message (no parent) with nested replies."""
    return "message_id" in record and "text" in record and isinstance(record.get("replies"), list) \
        and record.get("parent_id") is None and "prompt" not in record


def is_oasst_row(record: dict) -> bool:
    """One flat row: a message linked to its parent by id, without nested replies."""
    return all(k in record for k in ("message_id", "parent_id", "role", "text")) and "replies" not in record


def _prune_reason(node: TrackedRecord, conv: Conversion) -> str | None:
    """Why a message is left out (None: kept)."""
    if node.get("deleted"):
        return "oasst_deleted"
    if node.get("review_result") is False:
        return "oasst_review_failed"
    lang, message_lang = conv.options.oasst_lang, node.get("lang")
    if lang and message_lang not in (None, lang):
        return "oasst_lang"
    return None


def _paths(node: dict, top_only: bool) -> Iterator[list[dict]]:
    """Root-to-leaf paths; ``replies`` here are already pruned. A lower rank is better (None last)."""
    replies = node["replies"]
    if not replies:
        yield [node]
        return
    if top_only:
        replies = [min(replies, key=lambda r: (r["rank"] is None, r["rank"] or 0))]
    for reply in replies:
        for path in _paths(reply, top_only):
            yield [node] + path


def _conversations(root: dict, tree_id: Any, conv: Conversion) -> list[tuple[list[Message], dict]]:
    out = []
    for path in _paths(root, top_only=conv.options.oasst_paths == "top"):
        if path[-1]["role"] != "assistant":
            path = path[:-1]  # a trailing prompter message has no answer to learn from
        if len(path) < 2:
            continue
        messages = [make_message(ROLES.get(n["role"], n["role"]), n["text"]) for n in path]
        out.append((messages, {"message_tree_id": tree_id, "leaf_id": path[-1]["message_id"]}))
    return out


def _node(message: TrackedRecord, replies: list[dict]) -> dict:
    return {"message_id": message.get("message_id"), "role": message.get("role"), "text": message.get("text"),
            "rank": message.get("rank"), "replies": replies}


def _nested(message: TrackedRecord, conv: Conversion) -> dict:
    """The pruned tree under ``message`` (kept replies only, pruned ones counted)."""
    kept = []
    for raw in message.whole("replies") or []:
        reply = message.child(raw, "message")
        reason = _prune_reason(reply, conv)
        if reason:
            conv.notes[reason.replace("oasst_", "oasst_pruned_")] += 1
            continue
        kept.append(_nested(reply, conv))
    return _node(message, kept)


def convert_oasst_tree(record: TrackedRecord, conv: Conversion) -> list[tuple[list[Message], dict]]:
    """Conversations (messages, meta) of one tree, export-wrapped or bare."""
    if "prompt" in record:
        raw_root, tree_id = record.whole("prompt"), record.get("message_tree_id")
        if not isinstance(raw_root, dict):
            raise RecordError("bad_tree", "an OpenAssistant tree needs a 'prompt' message node")
    else:  # a bare root: its fields are tracked (and reported) as "message.*" like every other node
        raw_root, tree_id = dict(record), record.get("message_tree_id", record.get("message_id"))
        record.mark(*record.keys())
    root = record.child(raw_root, "message")
    reason = _prune_reason(root, conv)
    if reason:
        raise RecordError(reason, "the tree's root message is left out (deleted, failed review, or another language)")
    out = _conversations(_nested(root, conv), tree_id, conv)
    if not out:
        raise RecordError("no_assistant_turn", "the tree has no path that ends with an assistant reply")
    return out


def convert_oasst_rows(
    rows: list[tuple[str, TrackedRecord]], conv: Conversion
) -> tuple[list[tuple[list[Message], dict]], list[tuple[str, RecordError]]]:
    """Assemble flat rows into trees: conversations, and the rows left out with their reasons."""
    by_id: dict[Any, tuple[str, TrackedRecord]] = {}
    children: dict[Any, list[Any]] = {}
    skipped: list[tuple[str, RecordError]] = []
    for where, row in rows:
        message_id = row.get("message_id")
        row.get("message_tree_id")  # the tree's id goes into each conversation's meta
        if message_id in by_id:
            skipped.append((where, RecordError("duplicate_message_id", f"message {message_id!r} appears twice")))
            continue
        by_id[message_id] = (where, row)
        children.setdefault(row.get("parent_id"), []).append(message_id)

    visited: set[Any] = set()

    def build(message_id: Any, parent_left_out: bool) -> dict | None:
        visited.add(message_id)
        where, row = by_id[message_id]
        reason = "oasst_parent_skipped" if parent_left_out else _prune_reason(row, conv)
        if reason:
            detail = "its parent message is left out" if parent_left_out else \
                "deleted, failed review, or another language than --lang"
            skipped.append((where, RecordError(reason, detail)))
        replies = [build(child, bool(reason)) for child in children.get(message_id, [])]
        return None if reason else _node(row, [r for r in replies if r is not None])

    out = []
    for root_id in children.get(None, []):
        root = build(root_id, False)
        if root is not None:
            out += _conversations(root, by_id[root_id][1].get("message_tree_id", root_id), conv)
    for message_id, (where, _) in by_id.items():
        if message_id not in visited:
            skipped.append((where, RecordError("oasst_orphan", "its parent_id names no message in the data")))
    return out, skipped
