"""The pages of ``tuneful ui`` — Data, Train, Runs, Evaluate, Chat — as one Gradio Blocks app.

Layout and wiring only, a module per page (``*_page.py``): every handler calls the package's Python API (the one
the CLI calls) or reads a run folder (:mod:`.runs`); every path typed on a page goes through the root folder
(:mod:`.paths`). Work longer than a page request (training, evaluation) runs as a ``tuneful`` process of its own.
"""

from __future__ import annotations

import gradio as gr

from .chat import ChatModels
from .chat_page import chat_page
from .data_page import data_page
from .evaluate_page import evaluate_page
from .paths import RootFolder
from .runs_page import runs_page
from .train_page import train_page


def build_app(root: RootFolder) -> gr.Blocks:
    chats = ChatModels()
    with gr.Blocks(title="tuneful") as app:
        gr.Markdown(f"# tuneful\nFrom a base model to a chat model. Root folder: `{root.root}` — every path on these "
                    "pages is read from it, and paths outside it are refused.")
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                data_page(root)
            with gr.Tab("Train", id="train"):
                train_page(app, root)
            with gr.Tab("Runs", id="runs"):
                runs_page(app, root)
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate_page(app, root)
            with gr.Tab("Chat", id="chat"):
                chat_page(app, root, chats)
    return app
