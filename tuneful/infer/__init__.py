"""Inference: a model ready to chat with its trained template (``chat_model``), batched generation with the
KV cache (``generate``) and the terminal chat (``chat_repl``). The server is :mod:`tuneful.serve`."""
