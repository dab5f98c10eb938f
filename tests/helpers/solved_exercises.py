"""A stub with every `raise NotImplementedError` replaced by a call to the package's own code: a
learner's exercise solved right, to prove the swap puts the learner's code in the package's
place without breaking a test the package passes."""

import ast
from pathlib import Path

from transformer.exercises.swap import pristine_path


def solved_source(chapter: str) -> str:
    """The stub's text, each body that raises now returning what the package computes. Methods
    call `super()`; static methods and functions call the originals, captured when the module
    loads (before the swap puts this module's names in their place)."""
    tree = ast.parse(pristine_path(chapter).read_text())
    preamble = ast.parse(f"import transformer.model.{chapter} as _package\n_ORIGINAL = dict(vars(_package))\n").body
    tree.body[1:1] = preamble  # after the module docstring
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef):
                    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in member.decorator_list)
                    owner = f"_ORIGINAL[{node.name!r}].{member.name}" if static else f"super().{member.name}"
                    _solve(member, owner, skip_self=not static)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            _solve(node, f"_ORIGINAL[{node.name!r}]", skip_self=False)
    return ast.unparse(ast.fix_missing_locations(tree))


def write_solved(chapter: str, folder: Path) -> Path:
    path = folder / f"{chapter}.py"
    path.write_text(solved_source(chapter))
    return path


def _solve(function: ast.FunctionDef, callee: str, skip_self: bool) -> None:
    names = [a.arg for a in function.args.args][1 if skip_self else 0 :]
    call = ast.parse(f"return {callee}({', '.join(names)})").body[0]
    function.body = [call if _raises_not_implemented(s) else s for s in function.body]


def _raises_not_implemented(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Raise)
        and isinstance(statement.exc, ast.Call)
        and isinstance(statement.exc.func, ast.Name)
        and statement.exc.func.id == "NotImplementedError"
    )
