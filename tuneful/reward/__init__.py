"""The reward-model trainer: a scalar head trained Bradley–Terry on preference pairs.
Floor 4: may import train, preference, infer and below; never another trainer."""
