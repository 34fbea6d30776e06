"""Conversations → token ids and train masks, batches with the one padding rule, the prepared-data cache.
Floor 2: may import data, templates, samples."""
