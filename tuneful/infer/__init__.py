"""The generation engine: a chat model, batched and continuous-batching generation, constrained calls, the REPL.
Floor 3: may import tokenization, models, data, templates, samples; never serve."""
