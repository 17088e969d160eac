"""The models a demo serves, and which one a request means: the model, its keep ratio, its
comparison partner."""

from __future__ import annotations

from typing import Dict, Optional

from .models import DemoModel
from .session import Settings

__all__ = ["ModelCatalog", "ratio_key", "size_mismatch"]


def ratio_key(ratio: float) -> float:
    """The keep ratio as cached and shown (slider values carry float noise)."""
    return round(float(ratio), 4)


def size_mismatch(a: DemoModel, b: DemoModel) -> str:
    """Why ``a`` and ``b`` (one big.LITTLE, one plain SAM) are not the same size; "" when they
    are, or when the pair is not one of each kind."""
    if a.is_biglittle == b.is_biglittle:
        return ""
    student, plain = (a, b) if a.is_biglittle else (b, a)
    if student.same_size_as(plain):
        return ""
    teacher, other = student.teacher, plain.config
    return (
        f"{student.name}'s big blocks are {teacher.embed_dim}-wide x {teacher.depth} at "
        f"{teacher.img_size} px, {plain.name} is {other.embed_dim}-wide x {other.depth} at "
        f"{other.img_size} px: not the same size, so their masks and times are not a "
        "like-for-like comparison"
    )


class ModelCatalog:
    """The shared, read-only models by menu name."""

    def __init__(self, models: Dict[str, DemoModel]) -> None:
        if not models:
            raise ValueError("the demo needs at least one model")
        self.models = models

    def model(self, name: Optional[str]) -> DemoModel:
        """The model called ``name``; an unknown name means the default model."""
        if name in self.models:
            return self.models[name]  # type: ignore[index]
        return self.models[self.default_model()]

    def default_model(self) -> str:
        """The model the page opens on: the first big.LITTLE model given on the command line, else
        the first model given there, else the first built-in big.LITTLE model, else the first."""
        given = [name for name, m in self.models.items() if not m.builtin]
        for group in (given, list(self.models)):
            for name in group:
                if self.models[name].is_biglittle:
                    return name
            if group:
                return group[0]
        return next(iter(self.models))

    def ratio(self, model: DemoModel, settings: Settings) -> float:
        """The keep ratio ``model`` runs at for this request (1.0 for plain SAM)."""
        return ratio_key(settings.keep_ratio) if model.is_biglittle else 1.0

    def compare_partner(self, settings: Settings) -> Optional[str]:
        """The model to compare with: the one asked for, else plain SAM of the same size, else
        any model of the other kind."""
        main = self.model(settings.model)
        wanted = settings.compare_model
        if wanted in self.models and wanted != main.name:
            return wanted
        others = [m for m in self.models.values() if m.is_biglittle != main.is_biglittle]
        if not others:
            return None
        if main.is_biglittle:
            same = [m for m in others if main.same_size_as(m)]
        else:
            same = [m for m in others if m.same_size_as(main)]
        return (same or others)[0].name
