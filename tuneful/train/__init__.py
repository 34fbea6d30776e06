"""The one training loop every trainer runs on: set-up, steps, checkpoints, metrics, the output folder.
Floor 3: may import tokenization, models, data, config; never a trainer."""
