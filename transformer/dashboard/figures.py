"""The dashboard's charts and tables, drawn with Plotly from `analysis.dashboard_data`.

Plotly because Dash draws Plotly figures natively: zoom, hover and legend toggling come free,
and each figure's data lives in the page, where the browser test can read it back.
"""

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from dash import html
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from transformer.analysis import dashboard_data as dd
from transformer.analysis import prompt_views as pv
from transformer.analysis.plotting.runs import RunHistory

COLOURS = qualitative.Plotly
X_TITLES = {"step": "optimizer step", "tokens": "training tokens", "flops": "training compute (FLOPs)"}


def colour(index: int) -> str:
    return str(COLOURS[index % len(COLOURS)])


def _layout(figure: go.Figure, title: str, x_axis: str, y_title: str) -> go.Figure:
    figure.update_layout(
        title=title,
        xaxis_title=X_TITLES.get(x_axis, x_axis),
        yaxis_title=y_title,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        height=380,
    )
    if x_axis == "flops":
        figure.update_xaxes(type="log")
    return figure


def loss_figure(histories: Sequence[RunHistory], x_axis: str) -> go.Figure:
    """Train loss as a faint line, validation loss as circles, one colour per run; hover gives
    the perplexity e^loss, the second reading of the same number."""
    figure = go.Figure()
    for index, history in enumerate(histories):
        for kind, key, mode, opacity in (("train", "loss", "lines", 0.45), ("eval", "val_loss", "lines+markers", 1.0)):
            line = dd.series(history, kind, key, x_axis)
            figure.add_trace(
                go.Scatter(
                    x=line.x,
                    y=line.y,
                    name=f"{history.label} {'train' if kind == 'train' else 'val'}",
                    mode=mode,
                    opacity=opacity,
                    line={"color": colour(index)},
                    customdata=[dd.perplexity(y) for y in line.y],
                    hovertemplate="%{x:.4g}: loss %{y:.4f}, perplexity %{customdata:.2f}",
                )
            )
    return _layout(figure, "Loss (nats per scored token)", x_axis, "loss")


def metric_figure(histories: Sequence[RunHistory], key: str, title: str, x_axis: str = "step") -> go.Figure:
    figure = go.Figure()
    for index, history in enumerate(histories):
        line = dd.series(history, "train", key, x_axis)
        figure.add_trace(go.Scatter(x=line.x, y=line.y, name=history.label, line={"color": colour(index)}))
    return _layout(figure, title, x_axis, key)


def usage_figure(history: RunHistory) -> go.Figure:
    """One heatmap per routing step: x = training step, y = pool entry, colour = share of the batch."""
    usage = dd.usage_history(history)
    n_steps = usage.usage.shape[1]
    figure = make_subplots(
        rows=n_steps, cols=1, shared_xaxes=True, subplot_titles=[f"routing step {k}" for k in range(n_steps)]
    )
    for k in range(n_steps):
        figure.add_trace(
            go.Heatmap(
                x=usage.steps,
                y=list(range(usage.usage.shape[2])),
                z=usage.usage[:, k, :].T.tolist(),
                zmin=0.0,
                zmax=1.0,
                colorscale="Viridis",
                showscale=k == 0,
                name=f"step {k}",
            ),
            row=k + 1,
            col=1,
        )
    figure.update_layout(
        title=f"{history.label}: layer usage", template="plotly_white", height=160 + 140 * n_steps, margin={"t": 60}
    )
    return figure


def entropy_figure(history: RunHistory) -> go.Figure:
    figure = go.Figure()
    for line in dd.entropy_series(history):
        if line.x:
            figure.add_trace(go.Scatter(x=line.x, y=line.y, name=line.name.removeprefix(history.label + " ")))
    return _layout(figure, f"{history.label}: routing entropy (nats; ln N is even use)", "step", "entropy")


def attention_figure(view: pv.AttentionView, label: str) -> go.Figure:
    layers, heads = view.patterns.shape[:2]
    figure = make_subplots(
        rows=layers,
        cols=heads,
        subplot_titles=[f"layer {layer} head {head}" for layer in range(layers) for head in range(heads)],
        horizontal_spacing=0.04,
        vertical_spacing=0.08,
    )
    positions = list(range(len(view.tokens)))
    for layer in range(layers):
        for head in range(heads):
            figure.add_trace(
                go.Heatmap(
                    z=view.patterns[layer, head].tolist(),
                    x=positions,
                    y=positions,
                    zmin=0.0,
                    zmax=1.0,
                    colorscale="Blues",
                    showscale=layer == head == 0,
                    hovertemplate="query %{y} attends to key %{x}: %{z:.3f}<extra></extra>",
                ),
                row=layer + 1,
                col=head + 1,
            )
    ticks = {"tickmode": "array", "tickvals": positions, "ticktext": view.tokens}
    figure.update_xaxes(**ticks)
    figure.update_yaxes(autorange="reversed", **ticks)
    figure.update_layout(
        title=f"{label}: attention of each query (row) to each key (column)",
        height=120 + 260 * layers,
        template="plotly_white",
    )
    return figure


def route_figure(view: pv.RouteView, label: str) -> go.Figure:
    steps, positions = view.choices.shape
    figure = go.Figure(
        go.Heatmap(
            z=view.choices.tolist(),
            x=list(range(positions)),
            y=list(range(steps)),
            text=[view.tokens for _ in range(steps)],
            texttemplate="%{text}",
            zmin=-0.5,
            zmax=len(view.entries) - 0.5,
            colorscale="Turbo",
            colorbar={"tickvals": list(range(len(view.entries))), "ticktext": view.entries},
            hovertemplate="step %{y}, token %{text}: entry %{z}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{label}: the entry each token took at each routing step",
        xaxis_title="position",
        yaxis_title="routing step",
        template="plotly_white",
        height=160 + 50 * steps,
    )
    return figure


# --- tables ----------------------------------------------------------------------------------


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return dd.MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) >= 1e5 else f"{value:.{digits}f}"


SUMMARY_COLUMNS = (
    "run",
    "kind",
    "parameters",
    "active parameters",
    "steps",
    "tokens",
    "best val loss",
    "at step",
    "final val loss",
    "training FLOPs",
    "median tokens/s",
)


def summary_table(histories: Sequence[RunHistory]) -> html.Table:
    rows = []
    for history in histories:
        row = dd.summary_row(history)
        cells: list[Any] = [
            row.run,
            row.kind,
            _number(row.parameters),
            _number(row.active_parameters),
            _number(row.steps),
            _number(row.tokens),
            _number(row.best_val_loss),
            _number(row.best_val_step),
            _number(row.final_val_loss),
            _number(row.total_flops, 3),
            _number(row.median_tokens_per_s, 0)
            if row.median_tokens_per_s is None
            else f"{row.median_tokens_per_s:,.0f}",
        ]
        rows.append(html.Tr([html.Td(cell) for cell in cells]))
    return html.Table(
        [html.Thead(html.Tr([html.Th(name) for name in SUMMARY_COLUMNS])), html.Tbody(rows)], className="table"
    )


def config_table(histories: Sequence[RunHistory], only_differences: bool) -> html.Table:
    table = dd.compare_configs(histories)
    rows = [
        html.Tr([html.Td(key)] + [html.Td(value) for value in values], className="differs" if differs else "same")
        for key, values, differs in zip(table.keys, table.values, table.differs, strict=True)
        if differs or not only_differences
    ]
    return html.Table(
        [html.Thead(html.Tr([html.Th("setting")] + [html.Th(run) for run in table.runs])), html.Tbody(rows)],
        className="table",
    )


def equal_compute_table(histories: Sequence[RunHistory], flops: float) -> html.Table:
    rows = []
    for history in histories:
        loss = dd.loss_at_compute(history, flops)
        rows.append(html.Tr([html.Td(history.label), html.Td(_number(loss)), html.Td(_number(dd.perplexity(loss), 3))]))
    return html.Table(
        [
            html.Thead(html.Tr([html.Th("run"), html.Th(f"val loss at {flops:.3g} FLOPs"), html.Th("perplexity")])),
            html.Tbody(rows),
        ],
        className="table",
    )
