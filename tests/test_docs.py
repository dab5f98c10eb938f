"""The docs, and the docstrings and comments of the code, point readers at files and tests by name.
When code moves, nothing else notices that a chapter still sends them to the old place, so this
checks every such name against the tree."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every markdown file a reader is sent to; not rglob over ROOT, which would walk a local .venv.
DOCS = sorted([*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "bench").rglob("*.md")])
# Python files whose docstrings and comments send readers to other files. This file is left out:
# its made-up paths are there on purpose.
SOURCES = sorted(
    source
    for folder in ("transformer", "tests", "bench", "experiments", "tools")
    for source in (ROOT / folder).rglob("*.py")
    if source != Path(__file__).resolve()
)

# [text](target) and ![alt](target); a reference definition `[label]: target` on its own line.
INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)
# A repository path in prose or code, optionally with `::test` or `::Class::test` after it. Not
# preceded by a path character, so `../transformer/x.py` (a link, checked as one) and URLs are left
# to the link check. Template characters are part of the match, so that a placeholder such as
# `tests/test_<module>.py` or `tests/test_{a,b}.py` is reported instead of passing as `tests/`.
REPO_PATH = re.compile(r"(?<![\w./~-])((?:transformer|tests)/[\w./<>{},*-]*)((?:::\w+)+)?")
# `test_module::test_name`, and a test file without its folder: readable, but nothing could check
# which file they mean once tests live in subfolders.
SHORTHAND_TEST_ID = re.compile(r"(?<![\w./:-])test_\w+::\w*")
BARE_TEST_FILE = re.compile(r"(?<![\w./-])test_\w+\.py\b")
# A test named alone in backticks, `...` standing for an elided part of its name.
BARE_TEST_NAME = re.compile(r"`(test_\w*(?:\.\.\.\w*)*)`")


def _defines(source: Path, names: list[str]) -> bool:
    """Read with ast rather than imported: importing a test module would run its module-level setup."""
    body: list[ast.stmt] = ast.parse(source.read_text(encoding="utf-8")).body
    for name in names:
        found = next(
            (
                node
                for node in body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name
            ),
            None,
        )
        if found is None:
            return False
        body = found.body if isinstance(found, ast.ClassDef) else []
    return True


def _test_names(root: Path) -> set[str]:
    """A test named alone may be in any file, so a rename anywhere must still be caught."""
    return {
        node.name
        for source in (root / "tests").rglob("test_*.py")
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def broken_paths(text: str, root: Path = ROOT) -> list[str]:
    """The part of the check that means the same in a chapter and in a docstring."""
    broken = []
    for path, test_id in REPO_PATH.findall(text):
        # A sentence or a list may go on straight after a path: "... in transformer/model/mlp.py."
        path = path.rstrip(".,")
        if not (root / path).exists():
            broken.append(f"path {path}")
        elif test_id:
            names = test_id.removeprefix("::").split("::")
            if not (path.endswith(".py") and _defines(root / path, names)):
                broken.append(f"test {path}{test_id}")
    return broken


def broken_references(text: str, doc: Path, root: Path = ROOT) -> list[str]:
    """What `text`, the contents of `doc`, names that is not there; links are relative to `doc`, as a
    markdown viewer resolves them."""
    broken = []
    for target in INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text):
        if EXTERNAL.match(target):
            continue
        if not (doc.parent / target.split("#", 1)[0]).exists():
            broken.append(f"link {target}")
    broken += broken_paths(text, root)
    broken += [f"unchecked {shorthand}" for shorthand in SHORTHAND_TEST_ID.findall(text)]
    broken += [f"unchecked {name}" for name in BARE_TEST_FILE.findall(text)]
    names = BARE_TEST_NAME.findall(text)
    if names:
        known = _test_names(root)
        for name in names:
            pattern = re.compile(r"\w*".join(map(re.escape, name.split("..."))))
            if not any(pattern.fullmatch(test) for test in known):
                broken.append(f"test {name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_file_and_test_a_doc_names_exists(doc: Path) -> None:
    assert broken_references(doc.read_text(encoding="utf-8"), doc) == []


def test_every_path_a_docstring_or_comment_names_exists() -> None:
    broken = {
        str(source.relative_to(ROOT)): found
        for source in SOURCES
        if (found := broken_paths(source.read_text(encoding="utf-8")))
    }
    assert broken == {}


def test_the_docs_and_sources_are_found() -> None:
    """An empty list would make the checks above pass vacuously."""
    assert ROOT / "README.md" in DOCS
    assert ROOT / "docs" / "modules" / "attention.md" in DOCS
    assert ROOT / "transformer" / "model" / "attention.py" in SOURCES
    assert Path(__file__).resolve() not in SOURCES


def test_made_up_names_are_reported_and_real_ones_are_not(tmp_path: Path) -> None:
    """The checker itself, on a small tree of its own, so it is tested whatever the real docs say."""
    (tmp_path / "transformer" / "model").mkdir(parents=True)
    (tmp_path / "transformer" / "model" / "attention.py").write_text("class Attention:\n    def forward(self): ...\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_attention.py").write_text("def test_copies(): ...\n")
    (tmp_path / "docs" / "modules").mkdir(parents=True)
    (tmp_path / "docs" / "routing.md").write_text("# Routing\n")
    doc = tmp_path / "docs" / "modules" / "attention.md"
    text = "\n".join(
        [
            "Real: [code](../../transformer/model/attention.py), [routing](../routing.md#the-router),",
            "`transformer/model/attention.py`, `tests/test_attention.py::test_copies`, `transformer/model/`,",
            "`transformer/model/attention.py::Attention::forward`, and a sentence ending in tests/test_attention.py.",
            "External: [torch](https://pytorch.org/docs), [top](#why), [mail](mailto:a@b.c).",
            "",
            "Made up: [gone](../../transformer/attention.py), ![figure](../missing.png),",
            "`transformer/attention.py`, `tests/test_<module>.py`, `tests/test_{attention,mlp}.py`,",
            "`tests/test_attention.py::test_nothing`, `tests/test_attention.py::test_copies::inner`,",
            "`transformer/model/attention.py::Attention::backward`, `transformer/model/::Attention`.",
            "",
            "Real, by name alone: `test_copies`, `test_co...`, `test_...pies`.",
            "Made up, by name alone: `test_copies_twice`, `test_...twice`.",
            "Tests named without their file: `test_attention::test_copies`, `test_attention::` padding tests,",
            "the tests in test_attention.py.",
            "[moved]: ../../tests/test_mlp.py",
        ]
    )
    assert broken_references(text, doc, root=tmp_path) == [
        "link ../../transformer/attention.py",
        "link ../missing.png",
        "link ../../tests/test_mlp.py",
        "path transformer/attention.py",
        "path tests/test_<module>.py",
        "path tests/test_{attention,mlp}.py",
        "test tests/test_attention.py::test_nothing",
        "test tests/test_attention.py::test_copies::inner",
        "test transformer/model/attention.py::Attention::backward",
        "test transformer/model/::Attention",
        "unchecked test_attention::test_copies",
        "unchecked test_attention::",
        "unchecked test_attention.py",
        "test test_copies_twice",
        "test test_...twice",
    ]
