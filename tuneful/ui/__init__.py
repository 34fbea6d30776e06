"""tuneful ui: the pipeline in a browser (Gradio), a thin layer over the Python API the CLI calls.
Floor 6: may import the registry, sandbox and anything below; only cli imports it."""
