"""The sandbox's task families as an evaluation task suite (:class:`tuneful.eval.prompts.TaskSuite`): the held-out
prompt set ``tuneful eval --prompts sandbox`` names, and the verifier of every prompt with a ``sandbox`` check."""

from __future__ import annotations

from ..eval.prompts import EvalPrompt
from .base import load_recipe, shipped_base_dir
from .tasks import FAMILY_BY_NAME, eval_instances
from .world import make_world


class SandboxTasks:
    """Held-out phrasings and families of the shipped base model's world; answers checked by each family's verifier."""

    name = "sandbox"

    def held_out(self, seed: int = 0, per_family: int = 20) -> list[EvalPrompt]:
        recipe = load_recipe(shipped_base_dir())
        world = make_world(recipe.seed, recipe.countries)
        out = []
        for set_name, instances in eval_instances(world, per_family, seed).items():
            for k, inst in enumerate(instances):
                out.append(EvalPrompt(f"{set_name}-{k}", inst.messages, None,
                                      {"family": inst.family, "check": inst.check, "set": set_name}, inst.answer))
        return out

    def verify(self, check: dict, answer: str) -> bool:
        family = FAMILY_BY_NAME.get(check["family"])
        if family is None:
            raise ValueError(f"unknown sandbox family {check['family']!r} (known: {', '.join(FAMILY_BY_NAME)})")
        return bool(family.verify(answer, check.get("check") or {}))
