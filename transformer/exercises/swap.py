"""Put a learner's exercise in the package's place, so the package's own tests judge it.

A stub names, in `__all__`, the objects of `transformer.model.<chapter>` it stands in for. Every
loaded module of the package (and of the tests) that holds one of those objects gets the
learner's instead: classes built later (`make_norm` building a `LayerNorm`, `TransformerLayer`
building an `Attention`) are the learner's too, and a test module imported afterwards finds
them under the package's name. The stubs subclass the package's classes, so what the learner
does not write (parameters, the fused path) is the package's.
"""

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from transformer.errors import UserError
from transformer.exercises import CHAPTERS

PRISTINE = Path(__file__).parent


class ExerciseError(UserError):
    """An exercise that cannot be found or loaded."""


def check_chapter(chapter: str) -> None:
    if chapter not in CHAPTERS:
        raise ExerciseError(f"no exercise {chapter!r}: the chapters with one are {', '.join(CHAPTERS)}")


def pristine_path(chapter: str) -> Path:
    """The untouched stub, shipped with the package."""
    check_chapter(chapter)
    return PRISTINE / f"{chapter}.py"


def learner_path(chapter: str, folder: Path) -> Path:
    """The learner's copy of the stub if there is one in `folder`, else the pristine stub."""
    own = folder / f"{chapter}.py"
    return own if own.is_file() else pristine_path(chapter)


def load(chapter: str, path: Path) -> ModuleType:
    """The exercise module at `path`, imported under its own name (`exercises.<chapter>`)."""
    spec = importlib.util.spec_from_file_location(f"exercises.{chapter}", path)
    if spec is None or spec.loader is None:
        raise ExerciseError(f"cannot load the exercise {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Replacement:
    module: ModuleType
    attribute: str
    original: object


def swap_in(chapter: str, stub: ModuleType, wrap: Callable[[Any], Any] | None = None) -> list[Replacement]:
    """Put the stub's names in place of the package's everywhere; returns what to undo.

    `wrap`, if given, decorates each function the stub defines (its methods too): the tests pass
    jaxtyping's runtime shape check, which the package gets from an import hook the stub's
    loading bypasses."""
    target = importlib.import_module(f"transformer.model.{chapter}")
    names: list[str] = list(getattr(stub, "__all__", []))
    if not names:
        raise ExerciseError(f"the exercise {stub.__file__} names nothing to stand in for (its __all__ is empty)")
    undo: list[Replacement] = []
    for name in names:
        if not hasattr(target, name) or not hasattr(stub, name):
            raise ExerciseError(f"the exercise {stub.__file__} must define {name}, as transformer.model.{chapter} does")
        original, replacement = getattr(target, name), getattr(stub, name)
        if wrap is not None:
            replacement = _wrapped(replacement, wrap)
        for module in _package_modules(stub):
            for attribute, value in list(vars(module).items()):
                if value is original:
                    undo.append(Replacement(module, attribute, original))
                    setattr(module, attribute, replacement)
    return undo


def swap_out(undo: list[Replacement]) -> None:
    for replacement in reversed(undo):
        setattr(replacement.module, replacement.attribute, replacement.original)


def _package_modules(stub: ModuleType) -> list[ModuleType]:
    return [
        module
        for name, module in list(sys.modules.items())
        if module is not stub and name.split(".")[0] in ("transformer", "tests", "experiments")
    ]


def _wrapped(obj: Any, wrap: Callable[[Any], Any]) -> Any:
    if isinstance(obj, type):
        for name, member in list(vars(obj).items()):
            if isinstance(member, staticmethod):
                setattr(obj, name, staticmethod(wrap(member.__func__)))
            elif callable(member) and not name.startswith("__"):
                setattr(obj, name, wrap(member))
        return obj
    return wrap(obj) if callable(obj) else obj
