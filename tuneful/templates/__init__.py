"""Chat templates: the built-in ones, the tokenizer's own, rendering, and each turn's character spans.
Floor 1: imports no other tuneful package."""
