"""The top-level names: each one `transformer.__all__` promises imports from `transformer`, and
importing the package alone loads none of them (so `transformer --help` does not wait for torch)."""

import os
import subprocess
import sys

import pytest

import transformer


@pytest.mark.parametrize("name", transformer.__all__)
def test_every_exported_name_imports_from_the_package(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from transformer import {name}", namespace)
    value = namespace[name]
    assert getattr(value, "__name__", None) == name
    assert getattr(value, "__module__", "").startswith("transformer.")  # the object itself, not a stand-in


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        transformer.Nothing  # noqa: B018


def test_importing_the_package_does_not_import_torch() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "TRANSFORMER_TYPECHECK"}
    probe = "import sys, transformer; print(sorted(m for m in ('torch', 'numpy', 'jaxtyping') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=environment, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
