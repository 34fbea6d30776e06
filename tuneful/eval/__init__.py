"""Evaluation: base vs tuned on the same prompts (instruction checks, tool calls, held-out loss, judge).
Floor 4: may import infer, models, tokenization, data; task suites come in through an interface."""
