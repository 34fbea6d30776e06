"""Data: every shape people train on, read into one typed conversation model; mixtures; tool-call parsing.
Floor 1: imports no other tuneful package."""
