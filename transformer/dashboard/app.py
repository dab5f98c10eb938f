"""`transformer dashboard`: the runs side by side in a local web page, built with Dash.

Why Dash (Plotly) and not Gradio, which the project this package grew from used: in this
environment Gradio's current release pins Pillow below the installed 13 and the release that
accepts it is years old, while Dash adds nothing that moves an installed package. Dash is
made for exactly this page (charts, tables, a timer that polls), keeps every figure's data
in the page (the browser test reads it back), and runs on Flask with no build step.

One page, top to bottom: the training curves (x axis: steps, tokens or FLOPs), the summary
table, the config comparison, the routing figures of routed runs, and a prompt panel that
samples from a checkpoint and shows the prompt's attention (plain) or routes (routed).
A timer re-reads the logs that grew (`RunSet.refresh`), so a run still training moves on
the page; nothing is redrawn while the logs stand still.
"""

import logging
import math
import re
import threading
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from transformer.analysis import dashboard_data as dd
from transformer.analysis import prompt_views as pv
from transformer.dashboard import figures
from transformer.errors import UserError
from transformer.inference.loading import TrainedRun, load_trained
from transformer.training import checkpoint as ckpt

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 2em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.table { border-collapse: collapse; font-size: 0.9em; }
.table th, .table td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
.table td:first-child, .table th:first-child { text-align: left; }
.table tr.differs td { background: #fff3c4; font-weight: 600; }
.row { display: flex; gap: 1em; flex-wrap: wrap; align-items: end; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.row label { display: flex; flex-direction: column; font-size: 0.85em; }
pre#sample { white-space: pre-wrap; background: #f6f6f6; padding: 0.8em; min-height: 2em; }
.error { color: #b00020; }
"""

# Longer than a routed model's routing prefix in the shipped configs (16 tokens for char models).
DEFAULT_PROMPT = "for name in names:\n    print(name)"

INDEX = (
    "<!DOCTYPE html><html><head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}"
    f"<style>{STYLE}</style></head><body>{{%app_entry%}}<footer>{{%config%}}{{%scripts%}}{{%renderer%}}</footer>"
    "</body></html>"
)


class Models:
    """Loaded checkpoints, kept while they are the run's latest (or best): loading costs more
    than sampling a few tokens."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, str], tuple[Path, TrainedRun]] = {}
        self._lock = threading.Lock()

    def get(self, run_dir: Path, which: str) -> TrainedRun:
        folder = ckpt.resolve(run_dir, which).resolve()
        with self._lock:
            kept = self._loaded.get((run_dir, which))
            if kept is None or kept[0] != folder:
                kept = (folder, load_trained(run_dir, which))
                self._loaded[(run_dir, which)] = kept
            return kept[1]


def create_app(run_set: dd.RunSet, poll_seconds: float = 5.0) -> Dash:
    app = Dash(__name__, title="transformer dashboard")
    app.index_string = INDEX
    lock = threading.Lock()
    models = Models()
    app.layout = _layout(run_set, poll_seconds)

    @app.callback(
        Output("loss", "figure"),
        Output("lr", "figure"),
        Output("throughput", "figure"),
        Output("summary", "children"),
        Output("config", "children"),
        Output("routing", "children"),
        Output("status", "children"),
        Output("budget", "min"),
        Output("budget", "max"),
        Output("budget", "value"),
        Output("budget", "marks"),
        Output("seen", "data"),
        Input("poll", "n_intervals"),
        Input("x-axis", "value"),
        Input("only-differences", "value"),
        State("seen", "data"),
        State("budget", "value"),
    )
    def refresh(_: int, x_axis: str, only: list[str], seen: int, budget: float | None) -> tuple[Any, ...]:
        with lock:
            run_set.refresh()
            if ctx.triggered_id == "poll" and seen == run_set.version:
                raise PreventUpdate  # the logs stand still: keep the page (and its zoom) as it is
            histories = list(run_set.histories)
            version = run_set.version
        routed = [h for h in histories if h.routed]
        routing: list[Any] = []
        for history in routed:
            routing += [
                dcc.Graph(figure=figures.usage_figure(history), id=f"usage-{element_id(history.label)}"),
                dcc.Graph(figure=figures.entropy_figure(history), id=f"entropy-{element_id(history.label)}"),
            ]
        low, high, budget, marks = _budget_range(histories, budget)
        last_steps = ", ".join(f"{h.label}: step {dd.summary_row(h).steps}" for h in histories)
        return (
            figures.loss_figure(histories, x_axis),
            figures.metric_figure(histories, "lr", "Learning rate", x_axis),
            figures.metric_figure(histories, "tokens_per_s", "Throughput (tokens per second)", x_axis),
            figures.summary_table(histories),
            figures.config_table(histories, bool(only)),
            routing or html.P("No routed run among these."),
            f"{len(histories)} runs ({last_steps}); logs re-read every {poll_seconds:g} s",
            low,
            high,
            budget,
            marks,
            version,
        )

    @app.callback(Output("equal-compute", "children"), Input("budget", "value"), Input("seen", "data"))
    def equal_compute(budget: float | None, _: int) -> Any:
        with lock:
            histories = list(run_set.histories)
        if budget is None or dd.common_compute(histories) is None:
            return html.P(
                "No training-compute range that every run has evaluated over (a run without a checkpoint has no FLOPs)."
            )
        return figures.equal_compute_table(histories, 10.0**budget)

    @app.callback(
        Output("sample", "children"),
        Input("generate", "n_clicks"),
        State("run", "value"),
        State("checkpoint", "value"),
        State("prompt", "value"),
        State("new-tokens", "value"),
        State("temperature", "value"),
        State("seed", "value"),
        prevent_initial_call=True,
    )
    def sample(_: int, label: str, which: str, prompt: str, new_tokens: int, temperature: float, seed: int) -> Any:
        try:
            run = models.get(run_set.history(label).run_dir, which)
            return pv.sample_text(run, prompt or "", int(new_tokens or 0), float(temperature or 0), int(seed or 0))
        except UserError as error:
            return html.Span(f"error: {error}", className="error")

    @app.callback(
        Output("prompt-view", "children"),
        Input("look", "n_clicks"),
        State("run", "value"),
        State("checkpoint", "value"),
        State("prompt", "value"),
        prevent_initial_call=True,
    )
    def look(_: int, label: str, which: str, prompt: str) -> Any:
        try:
            run = models.get(run_set.history(label).run_dir, which)
            if run.model.kind == "plain":
                return dcc.Graph(figure=figures.attention_figure(pv.attention_view(run, prompt or ""), label))
            return dcc.Graph(figure=figures.route_figure(pv.route_view(run, prompt or ""), label))
        except UserError as error:
            return html.P(f"error: {error}", className="error")

    return app


def _budget_range(histories: list[Any], budget: float | None) -> tuple[float, float, float | None, dict[int, str]]:
    """The slider's range in log10 FLOPs (the compute every run has evaluated over) and its
    value: the user's budget while it stays in range, else the largest common one."""
    shared = dd.common_compute(histories)
    if shared is None:
        return 0.0, 1.0, None, {}
    low, high = math.log10(shared[0]), math.log10(shared[1])
    marks = {e: f"1e{e}" for e in range(math.ceil(low), math.floor(high) + 1)}
    return low, high, budget if budget is not None and low <= budget <= high else high, marks


def element_id(label: str) -> str:
    """A run's label as a page element id (Dash reserves the dot; CSS selectors dislike the rest)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", label)


def _layout(run_set: dd.RunSet, poll_seconds: float) -> html.Div:
    labels = run_set.labels
    return html.Div(
        [
            html.H1("transformer dashboard"),
            html.P(id="status"),
            dcc.Interval(id="poll", interval=int(poll_seconds * 1000)),
            dcc.Store(id="seen", data=-1),
            html.H2("Training curves"),
            html.Div(
                [
                    html.Span("x axis: "),
                    dcc.RadioItems(
                        id="x-axis",
                        options=[{"label": text, "value": key} for key, text in figures.X_TITLES.items()],
                        value="step",
                        inline=True,
                    ),
                ],
                className="row",
            ),
            dcc.Graph(id="loss"),
            html.Div([dcc.Graph(id="lr"), dcc.Graph(id="throughput")], className="pair"),
            html.H2("Summary"),
            html.Div(id="summary"),
            html.H2("Equal compute"),
            html.P(
                "Validation loss of every run at one training-compute budget (log10 FLOPs), read off its eval curve."
            ),
            dcc.Slider(id="budget", min=0, max=1, step=0.01, value=None, tooltip={"placement": "bottom"}),
            html.Div(id="equal-compute"),
            html.H2("Configs"),
            dcc.Checklist(id="only-differences", options=[{"label": " only the settings that differ", "value": "on"}]),
            html.Div(id="config"),
            html.H2("Routing"),
            html.Div(id="routing"),
            html.H2("A prompt"),
            html.Div(
                [
                    html.Label(["run", dcc.Dropdown(id="run", options=labels, value=labels[0], clearable=False)]),
                    html.Label(
                        [
                            "checkpoint",
                            dcc.Dropdown(id="checkpoint", options=["latest", "best"], value="latest", clearable=False),
                        ]
                    ),
                    html.Label(["new tokens", dcc.Input(id="new-tokens", type="number", value=100, min=0)]),
                    html.Label(["temperature", dcc.Input(id="temperature", type="number", value=0.8, min=0, step=0.1)]),
                    html.Label(["seed", dcc.Input(id="seed", type="number", value=0)]),
                ],
                className="row",
            ),
            dcc.Textarea(id="prompt", value=DEFAULT_PROMPT, style={"width": "100%", "height": "4em"}),
            html.Div([html.Button("Generate", id="generate"), html.Button("Attention / routes", id="look")]),
            html.Pre(id="sample"),
            html.Div(id="prompt-view"),
        ]
    )


def serve(run_dirs: list[Path], host: str = "127.0.0.1", port: int = 8050, poll_seconds: float = 5.0) -> None:
    app = create_app(dd.RunSet(run_dirs), poll_seconds)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per poll of every open page
    print(f"transformer dashboard: http://{host}:{port}/ ({len(run_dirs)} runs; Ctrl-C stops)", flush=True)
    app.run(host=host, port=port, debug=False)
