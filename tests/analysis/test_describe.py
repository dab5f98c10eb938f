"""`describe` traces one forward pass: every module call in order, with its shapes, and parameter
counts that add up to the model's size."""

import pytest
import torch
from torch import nn

from transformer.analysis.describe import COLUMNS, describe
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder

BATCH, POS, D_MODEL, D_VOCAB, N_LAYERS = 2, 8, 32, 50, 3


def decoder(**overrides: object) -> Decoder:
    values: dict[str, object] = dict(d_vocab=D_VOCAB, d_model=D_MODEL, n_heads=4, n_layers=N_LAYERS, n_ctx=16)
    values.update(overrides)
    torch.manual_seed(0)
    return Decoder(ModelConfig(**values))  # type: ignore[arg-type]


def parse(table: str) -> tuple[list[dict[str, str]], list[str]]:
    """Cuts rows at the column boundaries the dashed rule under the header marks: this only
    works if every row really is fixed-width. Returns (rows, footer lines)."""
    lines = table.splitlines()
    header, rule = lines[0], lines[1]
    spans, start = [], 0
    for dashes in rule.split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    assert [header[a:b].strip() for a, b in spans] == list(COLUMNS)
    rows, footer = [], []
    for line in lines[2:]:
        if len(line) == len(rule):
            rows.append({name: line[a:b].strip() for name, (a, b) in zip(COLUMNS, spans, strict=True)})
            assert all(line[b : b + 2] == "  " for _, b in spans[:-1]), line  # columns never run together
        else:
            footer.append(line)
    return rows, footer


def tokens() -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (BATCH, POS), generator=torch.Generator().manual_seed(0))


def test_every_layer_appears_in_call_order_with_its_shapes() -> None:
    rows, _ = parse(describe(decoder(), tokens()))
    names = [row["module"] for row in rows]
    stream = str([BATCH, POS, D_MODEL])
    assert names[0] == "(model)" and rows[0]["input"] == str([BATCH, POS])
    assert rows[0]["output"] == str([BATCH, POS, D_VOCAB])
    expected_order = ["embed", "pos_embed"]
    for i in range(N_LAYERS):
        expected_order += [f"layers.{i}"] + [f"layers.{i}.{part}" for part in ("ln1", "attn", "ln2", "mlp")]
    expected_order += ["ln_final", "unembed"]
    assert names[1:] == expected_order
    by_name = {row["module"]: row for row in rows}
    for i in range(N_LAYERS):
        attn, mlp = by_name[f"layers.{i}.attn"], by_name[f"layers.{i}.mlp"]
        assert (attn["class"], attn["input"], attn["output"]) == ("Attention", stream, stream)
        assert (mlp["class"], mlp["input"], mlp["output"]) == ("MLP", stream, stream)
        assert int(attn["params"].replace(",", "")) == 4 * D_MODEL * D_MODEL + 3 * D_MODEL + D_MODEL
    assert by_name["unembed"]["output"] == str([BATCH, POS, D_VOCAB])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": True},
        {"positional": "rotary"},
        {"norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    ],
    ids=["gpt2", "tied", "rotary", "llama_like"],
)
def test_parameter_column_adds_up_to_the_model_size(overrides: dict[str, object]) -> None:
    model = decoder(**overrides)
    total = sum(p.numel() for p in model.parameters())
    rows, footer = parse(describe(model, tokens()))
    counted = [int(row["params"].replace(",", "")) for row in rows if row["params"] != "-"]
    assert sum(counted) == total
    assert footer == [f"parameters in modules that ran: {total:,}"]


def test_module_called_twice_gets_two_rows_and_is_counted_once() -> None:
    rows, _ = parse(describe(decoder(positional="rotary"), tokens()))
    rotary = [row for row in rows if row["module"] == "layers.0.attn.rotary"]
    assert [row["params"] for row in rotary] == ["0", "-"]  # queries, then keys
    assert [row["input"] for row in rotary] == [str([BATCH, 4, POS, D_MODEL // 4])] * 2


def test_parameters_of_modules_that_never_ran_are_reported_apart() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = decoder(n_layers=1)
            self.spare = nn.Parameter(torch.zeros(7))
            self.unused = nn.Linear(3, 2)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner(tokens).logits
            return out

    model = WithSpare()
    rows, footer = parse(describe(model, tokens()))
    ran = sum(p.numel() for p in model.inner.parameters()) + 7
    assert footer == [f"parameters in modules that ran: {ran:,}", "parameters in modules that did not run: 8"]
    assert "unused" not in [row["module"] for row in rows]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_after_success_and_after_an_error() -> None:
    model = decoder()
    first = describe(model, tokens())
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="n_ctx"):
        describe(model, torch.zeros(1, 17, dtype=torch.long))  # longer than n_ctx=16
    assert _hook_count(model) == 0
    assert describe(model, tokens()) == first  # no row left over from the failed pass
