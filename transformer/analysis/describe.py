"""`describe(model, tokens)`: what one forward pass did, one table row per module call.

The code says what a model *can* do; this table shows what a forward pass *did*: which
module ran, in what order, with what shapes in and out, and where the parameters live. Rows
come in call order (a module before the modules it calls), so the table reads as a trace of
the data's path. Each row counts only the module's own parameters, not its children's, and
each parameter once, so the column adds up to the model's size. A module that runs twice
(rotary turns queries, then keys) gets a row per call; "-" marks parameters counted above.

The caller prints the result: `print(describe(model, tokens))`.
"""

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from transformer.model.decoder import DecoderOutput

COLUMNS = ("module", "class", "input", "output", "params")


@dataclass
class _Call:
    name: str
    kind: str
    inputs: str
    params: int | None  # None: this module's parameters were counted on an earlier row
    output: str = "(did not return)"


def describe(model: nn.Module, tokens: Int[Tensor, "batch pos"]) -> str:
    """Runs `model(tokens)` once, without gradients, and returns the table as text."""
    names = {module: name or "(model)" for name, module in model.named_modules()}
    calls: list[_Call] = []
    open_calls: dict[int, list[_Call]] = {}  # per module: calls entered and not yet returned
    counted: set[int] = set()  # ids of parameters already in some row
    seen: set[int] = set()  # ids of modules that have run

    def on_enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in own)
        first_call = id(module) not in seen
        seen.add(id(module))
        # tensors only: options such as a mask left at None or a position offset are not shapes
        shown = [_shape(arg) for arg in args if _has_tensor(arg)]
        shown += [f"{key}={_shape(value)}" for key, value in kwargs.items() if _has_tensor(value)]
        call = _Call(
            name=names[module],
            kind=type(module).__name__,
            inputs=", ".join(shown),
            params=sum(p.numel() for p in own) if first_call else None,
        )
        calls.append(call)
        open_calls.setdefault(id(module), []).append(call)

    def on_return(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        open_calls[id(module)].pop().output = _shape(output)

    handles: list[RemovableHandle] = []
    try:
        for module in names:
            handles.append(module.register_forward_pre_hook(on_enter, with_kwargs=True))
            handles.append(module.register_forward_hook(on_return, with_kwargs=True))
        with torch.no_grad():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return _table(calls, model)


def _has_tensor(value: object) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, tuple | list) and any(map(_has_tensor, value)))


def _shape(value: object) -> str:
    if isinstance(value, DecoderOutput):  # the logits, and the routing report of a routed decoder
        return _shape(value.logits if value.routing is None else (value.logits, value.routing))
    if isinstance(value, Tensor):
        return str(list(value.shape))
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_shape(item) for item in value) + ")"
    if value is None or isinstance(value, int | float | bool | str):
        return repr(value)
    return type(value).__name__


def _table(calls: list[_Call], model: nn.Module) -> str:
    rows = [COLUMNS] + [
        (c.name, c.kind, c.inputs, c.output, "-" if c.params is None else f"{c.params:,}") for c in calls
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        return "  ".join(cells + [row[-1].rjust(widths[-1])])

    lines = [line(rows[0]), "  ".join("-" * width for width in widths)] + [line(row) for row in rows[1:]]
    shown = sum(c.params for c in calls if c.params is not None)
    lines.append(f"parameters in modules that ran: {shown:,}")
    total = sum(p.numel() for p in model.parameters())
    if total != shown:
        lines.append(f"parameters in modules that did not run: {total - shown:,}")
    return "\n".join(lines)
