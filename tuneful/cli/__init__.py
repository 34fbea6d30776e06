"""The tuneful command: one sub-command per stage, the training commands made from tuneful.registry.
Floor 7 (the top): may import anything, inside its commands (tuneful --help must not load torch)."""
