"""The sandbox: a tiny world, its tasks and verifiers, a base model, and the demos built on them.
Floor 5: may import any trainer and application below; only cli and ui import it."""
