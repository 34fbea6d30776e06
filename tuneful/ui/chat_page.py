"""The Chat page of ``tuneful ui``: one model, or two side by side on the same messages, streamed from the
threaded replies of :mod:`.chat`."""

from __future__ import annotations

import time
from typing import Any, Iterator

import gradio as gr

from ..templates.registry import builtin_names
from .chat import ChatModels, Side
from .page_parts import OWN_TEMPLATE, SANDBOX, chosen_template, failed, model_choices
from .paths import RootFolder


def chat_page(app: gr.Blocks, root: RootFolder, chats: ChatModels) -> None:
    gr.Markdown("Chat with one model, or two side by side on the same messages (base vs tuned). The template is the "
                "one saved with each model; choose another to see what a wrong template does.")
    with gr.Row():
        spec_a = gr.Dropdown([SANDBOX], value=SANDBOX, label="Model A", allow_custom_value=True,
                             elem_id="chat-model-a")
        spec_b = gr.Dropdown([SANDBOX], value=None, label="Model B (optional, side by side)", allow_custom_value=True,
                             elem_id="chat-model-b")
        template = gr.Dropdown([OWN_TEMPLATE, *builtin_names()], value=OWN_TEMPLATE, label="Template",
                               allow_custom_value=True, elem_id="chat-template")
        max_new = gr.Slider(8, 512, value=64, step=8, label="Max new tokens")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.1, label="Temperature (0: greedy)")
    notes = gr.Markdown(elem_id="chat-notes")
    with gr.Row():
        chat_a = gr.Chatbot(label="A", elem_id="chat-a", height=380)
        chat_b = gr.Chatbot(label="B", elem_id="chat-b", height=380)
    turns_a, turns_b = gr.State([]), gr.State([])
    with gr.Row():
        message = gr.Textbox(placeholder="Write a message and press Enter", show_label=False, elem_id="chat-message",
                             scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1)

    def reply(text: str, a: str, b: str, template_choice: str, new_tokens: float, temp: float, past_a: list,
              past_b: list) -> Iterator[list[Any]]:
        if not text.strip():
            yield [gr.skip()] * 6
            return
        try:
            specs = [root.source(a, names=(SANDBOX,)), root.source(b, names=(SANDBOX,))]
            chosen = chosen_template(root, template_choice)
        except (ValueError, OSError) as exc:
            yield [gr.skip(), gr.skip(), gr.skip(), gr.skip(), failed(exc), gr.skip()]
            return
        sides = [Side(chats, spec, chosen, past, text, int(new_tokens), float(temp))
                 for spec, past in zip(specs, (past_a, past_b))]
        while True:
            finished = all(side.done for side in sides)
            notes_text = "\n".join(f"- {spec}: {n}" for spec, side in zip(specs, sides) for n in side.notes)
            yield [sides[0].shown(), sides[1].shown() if specs[1] else [], sides[0].turns if not sides[0].error else
                   sides[0].past, sides[1].turns if not sides[1].error else sides[1].past, notes_text, ""]
            if finished:
                return
            time.sleep(0.1)

    inputs = [message, spec_a, spec_b, template, max_new, temperature, turns_a, turns_b]
    outputs = [chat_a, chat_b, turns_a, turns_b, notes, message]
    app.load(lambda: [gr.update(choices=model_choices(root))] * 2, None, [spec_a, spec_b])
    send.click(reply, inputs, outputs)
    message.submit(reply, inputs, outputs)
    clear.click(lambda: [[], [], [], [], ""], None, [chat_a, chat_b, turns_a, turns_b, notes])
