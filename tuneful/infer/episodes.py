"""Multi-turn episodes: the policy's turns, the tool calls it makes run by Python tools, until it answers.

Boundary: prompt records, a renderer (the template, as inference renders it), the generation engine
(``infer.generate``), a call parser and Python tools (``infer.tools``) in; episodes out. Nothing about
rewards or training: GRPO (``rl``) samples episodes here and ``tuneful eval --tools`` scores them.

Each round, every unfinished episode gets one policy turn (one engine call for all of them). The turn's
context is the conversation so far rendered by ``ChatModel.prompt_ids`` — the code the server, ``tuneful
chat`` and evaluation use, history re-rendered by the template each turn — and the engine prefills only what
the episode's previous turn did not already hold (``infer.prefix_cache``, matched by token ids). A reply
holding tool calls (the template's syntax, ``data.tool_parsers``) has them run and their results appended as
``tool`` messages; a reply without calls, one whose calls do not parse, or the turn at ``max_turns`` ends the
episode: its text before any call is the final answer.

What a trainer trains (``rl.rollout.sample_episode_groups``): every policy turn in the context it was sampled in. The
context — prompt, earlier turns as the template re-renders them, tool results — is masked; the sampled
ids (and the end-of-turn token when the turn stopped) are trained. A tool result is never trained as if
the model wrote it, and a turn is never trained in a context inference would not show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..data.tool_parsers import ToolParser
from .generate import generate
from .prefix_cache import PrefixCache
from .tools import Tools, call_tool, tool_schemas


@dataclass(frozen=True)
class Turn:
    context: list[int]  # what the policy saw: the rendered conversation up to this turn (masked in training)
    ids: list[int]  # what it wrote: sampled ids, then the stop token when it ended its turn (trained)
    text: str  # the reply as decoded for the call parser (special tokens kept)
    stopped: bool  # ended its turn before max_new_tokens


@dataclass
class Episode:
    record: int  # index of its prompt record
    messages: list[dict]  # the conversation: prompt, assistant turns with their calls, tool results
    turns: list[Turn] = field(default_factory=list)
    final: str = ""  # the answer: the last turn's text before any call
    answered: bool = False  # ended with a turn that made no call (not cut by max_turns, not a call that failed to parse)
    calls: int = 0  # tool calls made
    failed_calls: int = 0  # calls that did not parse, or whose tool answered with an error
    unparsed: int = 0  # of them, turns whose calls did not parse
    done: bool = False

    def transcript(self) -> list[dict]:
        """The conversation before the final answer (what a reward's ``prompt`` receives)."""
        last = self.messages[-1]
        return self.messages[:-1] if last["role"] == "assistant" and not last.get("tool_calls") else list(self.messages)


def play_episodes(episodes: list[Episode], next_turns: Callable[[list[Episode], int], list[Turn]], tools: Tools,
                  parser: ToolParser, *, max_turns: int) -> list[Episode]:
    """The episode loop, whatever writes the turns: each round ``next_turns(live episodes, round)`` gives one turn
    per unfinished episode (the engine on token ids in :func:`run_episodes`; a text-level policy elsewhere), its
    calls are parsed and run, until every episode has answered or ``max_turns``."""
    for round_ in range(max_turns):
        live = [e for e in episodes if not e.done]
        if not live:
            break
        for episode, turn in zip(live, next_turns(live, round_), strict=True):
            episode.turns.append(turn)
            _take_turn(episode, parser.parse(turn.text, truncated=not turn.stopped), tools,
                       last=round_ == max_turns - 1)
    return episodes


def run_episodes(policy: Any, tokenizer: Any, renderer: Any, records: Sequence[Any], indices: Sequence[int],
                 tools: Tools, parser: ToolParser, *, max_turns: int, max_new_tokens: int, batch_size: int,
                 do_sample: bool = True, temperature: float = 1.0, seed: int = 0, server: Any = None) -> list[Episode]:
    """One episode per entry of ``indices`` (an index into ``records``: PromptRecords with ``messages`` and
    ``tools``; a record without tools is offered ``tools``' schemas), its turns written by the engine (or by a vLLM
    ``server``: :mod:`tuneful.infer.vllm_server`)."""
    offered = tool_schemas(tools) if tools and any(not records[i].tools for i in indices) else None
    kept = PrefixCache()  # each turn starts from the keys and values of the episode's previous one

    def next_turns(live: list[Episode], round_: int) -> list[Turn]:
        contexts = [renderer.prompt_ids(e.messages, records[e.record].tools or offered) for e in live]
        replies = generate(policy, tokenizer, contexts, stop_ids=renderer.stop_ids, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                           seed=seed * 1_000_003 + round_, prefix_cache=kept, server=server)
        return [Turn(context, reply.token_ids + ([reply.stop_token] if reply.stopped else []),
                     tokenizer.decode(reply.token_ids, skip_special_tokens=False),  # a call marker may be special
                     reply.stopped)
                for context, reply in zip(contexts, replies)]

    return play_episodes([Episode(i, [dict(m) for m in records[i].messages]) for i in indices], next_turns, tools,
                         parser, max_turns=max_turns)


def _take_turn(episode: Episode, reply: Any, tools: Tools, *, last: bool) -> None:
    if reply.failed:
        episode.failed_calls += 1
        episode.calls += 1
        episode.unparsed += 1
    if not reply.tool_calls or reply.failed or last:
        episode.messages.append({"role": "assistant", "content": reply.content})
        episode.final, episode.done = reply.content, True
        episode.answered = not reply.tool_calls and not reply.failed
        return
    turn = len(episode.turns)
    calls = [{"id": f"call_{turn}_{k}", "type": "function",
              "function": {"name": c.name, "arguments": dict(c.arguments)}} for k, c in enumerate(reply.tool_calls)]
    episode.messages.append({"role": "assistant", "content": reply.content, "tool_calls": calls})
    for call in calls:
        result = call_tool(tools, call["function"]["name"], call["function"]["arguments"])
        episode.calls += 1
        episode.failed_calls += result.startswith("error: ")
        episode.messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                                 "content": result})
