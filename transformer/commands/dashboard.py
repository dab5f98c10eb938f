"""`transformer dashboard RUN_OR_PARENT ...`: argument parsing around `dashboard.app.serve`.

Dash is an optional extra: it is imported inside the handler, and a missing one is a one-line
error that names the extra to install.
"""

import argparse
from pathlib import Path

MISSING_DASH = "transformer dashboard needs Dash and Plotly: pip install 'transformer[dashboard]'"


def add_dashboard_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "dashboard",
        help="compare runs in a local web page (needs the dashboard extra)",
        description="Training curves of the runs overlaid (vs steps, tokens or FLOPs), a summary and a config "
        "comparison table, routing figures, and a panel that samples from a checkpoint and shows a prompt's "
        "attention or routes. Runs still training update as their logs grow. See docs/dashboard.md.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_OR_PARENT", help="a run directory, or a folder holding runs"
    )
    parser.add_argument("--port", type=int, default=8050, help="port to serve on (default: 8050)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine)")
    parser.add_argument(
        "--poll-seconds", type=float, default=5.0, help="how often the page re-reads the logs (default: 5)"
    )
    parser.set_defaults(handler=run_dashboard, prog=parser.prog)


def run_dashboard(args: argparse.Namespace) -> int:
    from transformer.analysis.dashboard_data import DashboardError, find_runs

    if not 0 < args.port < 65536:
        raise DashboardError(f"--port {args.port} is not a port number (1-65535)")
    if not args.poll_seconds > 0:
        raise DashboardError(f"--poll-seconds {args.poll_seconds} must be > 0")
    run_dirs = find_runs(args.runs)
    try:
        from transformer.dashboard.app import serve
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] in ("dash", "plotly", "flask"):
            raise DashboardError(MISSING_DASH) from None
        raise
    serve(run_dirs, args.host, args.port, args.poll_seconds)
    return 0
