"""Curation: dedup, quality and correctness scores, diversity-aware selection to a budget, a report.
Floor 4: may import preference, models, tokenization, data, config."""
