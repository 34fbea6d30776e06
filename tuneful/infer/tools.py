"""Python functions as tools: described to the model from their signatures, run when it calls them.

The convention of ``tuneful chat --tools FILE.py``, GRPO's episodes and ``tuneful eval --tools``: the
public plain functions a file defines are the tools; each is described by transformers' JSON schema of
its type hints and docstring, and a call runs ``fn(**arguments)``. What a call returns — or the error
it raised, or that no such tool exists — is the tool message's text: the model reads it, nothing crashes.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from pathlib import Path
from typing import Any, Callable

Tools = dict[str, Callable[..., Any]]


def load_tools(path: Path) -> Tools:
    """The public plain functions defined in a Python file (not those it imports), by name.

    Running the file is running your code: only pass files you wrote or trust.
    """
    from transformers.utils import get_json_schema

    spec = importlib.util.spec_from_file_location(f"tuneful_tools_{Path(path).stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--tools {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    functions = {name: fn for name, fn in inspect.getmembers(module, inspect.isfunction)
                 if not name.startswith("_") and fn.__module__ == module.__name__}
    if not functions:
        raise ValueError(f"--tools {path}: defines no public function")
    for name, fn in functions.items():
        try:
            get_json_schema(fn)
        except Exception as exc:  # transformers says what is missing (docstring, Args section, type hints)
            raise ValueError(f"--tools {path}: {name} cannot be described to the model: {exc}. Fix: type hints on "
                             "every argument and a docstring with an Args: section") from None
    return functions


def tool_schemas(tools: Tools) -> list[dict]:
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for fn in tools.values()]


def call_tool(tools: Tools, name: str, arguments: Any) -> str:
    """The text of the tool message answering a call: the function's result (a string as is, anything else as
    JSON), or ``error: ...`` for an unknown tool, arguments that are not an object, or what the function raised."""
    fn = tools.get(name)
    if fn is None:
        return f"error: there is no tool named {name!r}"
    if not isinstance(arguments, dict):
        return f"error: the arguments of {name} must be an object, got {type(arguments).__name__}"
    try:
        value = fn(**arguments)
        return value if isinstance(value, str) else json.dumps(value)
    except Exception as exc:  # the tool's failure is the model's to read, not the caller's to crash on
        return f"error: {type(exc).__name__}: {exc}"
