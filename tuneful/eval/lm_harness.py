"""Standard benchmarks through lm-evaluation-harness (``tuneful eval --lm-eval TASKS``).

The model lm-eval scores is the one ``tuneful eval`` already loaded (weights, tokenizer and the
template it evaluates with, set as the tokenizer's chat template), handed to lm-eval's own HF model
class; tasks are lm-eval's (hub tasks such as ``ifeval`` or ``mmlu`` where the hub is reachable, or
task YAML files in ``--lm-eval-include`` for local data). Nothing here scores anything itself.
"""

from __future__ import annotations

from typing import Any, Sequence


def lm_eval_scores(chat: Any, tasks: Sequence[str], *, include_path: str | None = None, limit: int | None = None,
                   batch_size: int = 8, apply_chat_template: bool = True, seed: int = 0) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for ``chat`` (a :class:`tuneful.infer.chat_model.ChatModel`).

    ``apply_chat_template``: prompts go through the model's chat template, as lm-eval does for chat
    models (a base model is better measured without it).
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RuntimeError("--lm-eval needs lm-evaluation-harness. Fix: pip install lm-eval") from None

    chat.tokenizer.chat_template = chat.template.source  # the template this evaluation uses, for lm-eval too
    model = HFLM(pretrained=chat.model, tokenizer=chat.tokenizer, batch_size=batch_size,
                 device=str(chat.device), max_length=chat.context_length)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    results = simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit,
                              apply_chat_template=apply_chat_template, log_samples=False, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    out: dict[str, dict[str, float]] = {}
    for task, metrics in (results or {}).get("results", {}).items():
        out[task] = {name.split(",")[0]: float(value) for name, value in metrics.items()
                     if isinstance(value, (int, float)) and not name.endswith("_stderr") and "stderr" not in name}
    return out
