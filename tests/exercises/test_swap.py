"""The exercise mechanism: an untouched stub puts NotImplementedError where the learner writes
code, a stub solved right gives the package's own logits, and the swap is undone cleanly.

Every check builds the same tiny decoder (the package's names looked up at call time, so a
swapped name is used), which runs every chapter's code: embedding, positions (or rotary, or
ALiBi), norm, attention, MLP, layer and decoder."""

import importlib
from pathlib import Path

import pytest
import torch
from torch import Tensor

from tests.helpers.solved_exercises import write_solved
from transformer.errors import UserError
from transformer.exercises import CHAPTERS
from transformer.exercises.swap import ExerciseError, learner_path, load, pristine_path, swap_in, swap_out
from transformer.model.config import ModelConfig

POSITIONAL = {"positions": "sinusoidal", "rotary": "rotary", "alibi": "alibi"}


def tiny_logits(chapter: str) -> Tensor:
    """Logits of a seeded 2-layer decoder built with whatever names the package holds now."""
    decoder = importlib.import_module("transformer.model.decoder")
    cfg = ModelConfig(
        d_vocab=11,
        d_model=8,
        n_heads=2,
        n_layers=2,
        n_ctx=6,
        positional=POSITIONAL.get(chapter, "learned"),
        kernels="readable",
    )
    torch.manual_seed(0)
    model = decoder.Decoder(cfg)
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    logits: Tensor = model(tokens).logits
    return logits


def test_the_chapters_are_the_model_modules_with_a_stub() -> None:
    for chapter in CHAPTERS:
        assert pristine_path(chapter).is_file()
        importlib.import_module(f"transformer.model.{chapter}")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_an_untouched_stub_raises_where_the_learner_writes(chapter: str) -> None:
    stub = load(chapter, pristine_path(chapter))
    package = importlib.import_module(f"transformer.model.{chapter}")
    originals = {name: getattr(package, name) for name in stub.__all__}
    undo = swap_in(chapter, stub)
    try:
        for name in stub.__all__:
            assert getattr(package, name) is getattr(stub, name)
        with pytest.raises(NotImplementedError, match="exercise: "):
            tiny_logits(chapter)
    finally:
        swap_out(undo)
    assert {name: getattr(package, name) for name in stub.__all__} == originals
    assert torch.isfinite(tiny_logits(chapter)).all()  # the package's own code is back


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_solved_exercise_gives_the_packages_logits_through_its_own_code(chapter: str, tmp_path: Path) -> None:
    expected = tiny_logits(chapter)
    write_solved(chapter, tmp_path)
    stub = load(chapter, learner_path(chapter, tmp_path))
    assert stub.__file__ == str(tmp_path / f"{chapter}.py")
    undo = swap_in(chapter, stub)
    try:
        got = tiny_logits(chapter)
    finally:
        swap_out(undo)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_the_learners_copy_wins_over_the_pristine_stub(tmp_path: Path) -> None:
    assert learner_path("norm", tmp_path) == pristine_path("norm")
    (tmp_path / "norm.py").write_text("__all__ = []\n")
    assert learner_path("norm", tmp_path) == tmp_path / "norm.py"
    with pytest.raises(ExerciseError, match="names nothing"):
        swap_in("norm", load("norm", tmp_path / "norm.py"))


def test_an_exercise_missing_a_name_or_chapter_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "mlp.py").write_text("__all__ = ['MLP']\n")
    with pytest.raises(ExerciseError, match="must define MLP"):
        swap_in("mlp", load("mlp", tmp_path / "mlp.py"))
    with pytest.raises(UserError, match="no exercise 'config'"):
        pristine_path("config")
