"""Tasks: models and recipes built from rnnkit's recurrent layers."""

from rnnkit.tasks.charlm import (
    BASELINE,
    RECIPE,
    CharLM,
    CharLMRecipe,
    detach_state,
    lr_at,
    sample,
)

__all__ = ["BASELINE", "RECIPE", "CharLM", "CharLMRecipe", "detach_state", "lr_at", "sample"]
