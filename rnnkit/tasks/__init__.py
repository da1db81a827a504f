"""Tasks: models and recipes built from rnnkit's recurrent layers."""

from rnnkit.tasks.charlm import (
    BASELINE,
    LONG_BUDGET_MINUTES,
    RECIPE,
    RECIPE_LONG,
    CharLM,
    CharLMRecipe,
    detach_state,
    lr_at,
    recipe_for,
    sample,
)

__all__ = [
    "BASELINE", "LONG_BUDGET_MINUTES", "RECIPE", "RECIPE_LONG", "CharLM", "CharLMRecipe", "detach_state",
    "lr_at", "recipe_for", "sample",
]  # fmt: skip
