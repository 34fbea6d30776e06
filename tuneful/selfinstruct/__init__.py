"""Self-Instruct: grow a dataset from seed tasks with a teacher, filtered and resumable.
Floor 4: may import infer and data."""
