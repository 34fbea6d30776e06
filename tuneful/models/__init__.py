"""What tuneful knows about a model, read from it: loading, LoRA, its head and own loss, batch layouts.
Floor 2: may import config and data."""
