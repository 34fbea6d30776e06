"""The OpenAI-compatible HTTP layer over the generation engine (tuneful.infer).
Floor 4: may import infer and data."""
