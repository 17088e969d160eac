"""Register the ``"biglittle_sam"`` model type with transformers when transformers is imported.

``import biglittle_sam`` must not import transformers (a second or more of start-up, for every
segment_anything user who has it installed), yet ``AutoModel.from_pretrained(folder)`` and
``pipeline("mask-generation", model=folder)`` must know a big.LITTLE folder once both are imported,
in either order. :func:`install` does it: if transformers is already imported it registers now;
otherwise a finder on ``sys.meta_path`` waits for ``import transformers`` and registers right after
that import completes, then removes itself. Nothing happens for transformers releases older than 5
(``biglittle_sam.hf`` needs 5 or newer, and says so when imported directly).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any, Optional, Sequence

__all__ = ["install", "register_now"]

_TARGET = "transformers"


def register_now() -> bool:
    """Import ``biglittle_sam.hf`` (which registers) if transformers >= 5 is importable.

    Returns whether the model type is registered. A failure other than an old transformers is
    reported as a warning, never raised: it must not break ``import transformers``.
    """
    module = sys.modules.get(_TARGET)
    version = str(getattr(module, "__version__", "0"))
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 5:
        return False
    try:
        import biglittle_sam.hf  # noqa: F401  (registers on import)
    except Exception as error:  # pragma: no cover - depends on the user's environment
        warnings.warn(
            f"biglittle_sam could not register its 'biglittle_sam' model type with transformers "
            f"{version} ({type(error).__name__}: {error}); AutoModel and pipeline() will not load "
            "big.LITTLE folders",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


class _RegisteringLoader(importlib.abc.Loader):
    """transformers' own loader, followed by :func:`register_now`."""

    def __init__(self, loader: importlib.abc.Loader, finder: "_TransformersFinder") -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._finder.remove()
        register_now()

    def __getattr__(self, name: str) -> Any:  # resource readers, is_package, ...
        return getattr(self._loader, name)


class _TransformersFinder(importlib.abc.MetaPathFinder):
    """Finds ``transformers`` through the other finders and wraps its loader."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != _TARGET:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader, self)
                return spec
        return None

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Register now if transformers is imported, else when it is (idempotent)."""
    if _TARGET in sys.modules:
        register_now()
        return
    if not any(isinstance(f, _TransformersFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersFinder())
