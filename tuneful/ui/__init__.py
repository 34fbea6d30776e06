"""``tuneful ui``: the pipeline in a browser (Gradio), a thin layer over the package's Python API.

The pages call what the CLI calls — :func:`tuneful.tokenization.view.inspect_data` for the Data page,
the typed settings and :func:`tuneful.config.build` for the Train form, ``tuneful sft|dpo|…|eval``
processes for runs and evaluations, :class:`tuneful.infer.chat_repl.ChatSession` for chat — so the UI
shows exactly what the commands do. What is the UI's own: the root folder every path must stay in
(:mod:`.paths`), starting and watching run processes (:mod:`.runs`), the settings form (:mod:`.forms`), the Chat page's models and threaded replies (:mod:`.chat`)
and the page layout (:mod:`.app`).
"""
