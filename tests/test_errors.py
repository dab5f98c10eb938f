"""Every exception the package defines is a `UserError`, so the command line's one `except
UserError` turns each into one line; an exception type that is a bug, not a user's mistake, must
be listed here with the reason."""

import importlib
import inspect
import pkgutil

import transformer
from transformer.errors import UserError

# exception types that are deliberately not user errors: name -> why a traceback is right
NOT_USER_ERRORS: dict[str, str] = {}


def _exception_types() -> dict[str, type[BaseException]]:
    """Every exception class defined in a transformer.* module, by its qualified name."""
    found = {}
    for module_info in pkgutil.walk_packages(transformer.__path__, "transformer."):
        if module_info.name == "transformer.__main__":
            continue  # importing it runs the command line
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_exception_of_the_package_is_a_user_error() -> None:
    types = _exception_types()
    # the ones the command line has always reported as one line, so the walk does find them
    assert {
        "transformer.model.config.ConfigError",
        "transformer.data.corpus.DataError",
        "transformer.data.tokenizer.TokenizerError",
        "transformer.training.checkpoint.CheckpointError",
        "transformer.training.trainer.TrainingError",
        "transformer.inference.generation.GenerationError",
        "transformer.analysis.plotting.runs.PlotError",
        "transformer.commands.errors.CommandError",
        "transformer.devices.DeviceError",
    } <= set(types)
    not_user_errors = {name for name, kind in types.items() if not issubclass(kind, UserError)}
    assert not_user_errors == set(NOT_USER_ERRORS), "derive these from UserError or list them with a reason"


def test_value_errors_stay_value_errors() -> None:
    """Code that catches ValueError around a config, tokenizer or generation request still does."""
    types = _exception_types()
    for name in (
        "transformer.model.config.ConfigError",
        "transformer.data.tokenizer.TokenizerError",
        "transformer.inference.generation.GenerationError",
    ):
        assert issubclass(types[name], ValueError), name
