"""`transformer plot RUN [RUN ...]`: argument parsing around `plotting.plot_runs`; main.py prints its errors.

Imports happen inside the handler, so `transformer --help` neither waits for nor needs matplotlib.
"""

import argparse
from pathlib import Path


def add_plot_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "plot",
        help="draw a run's metrics as PNG figures (needs matplotlib: the viz extra)",
        description="Loss and perplexity vs steps and vs FLOPs, learning rate, throughput; for routed runs "
        "layer usage, routing entropy and the paths taken; with several runs an equal-compute comparison. "
        "See docs/plots.md.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a run directory (its train.out_dir)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the PNGs (default: RUN/plots for one run, ./plots for several)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="NAME",
        help="one name per run for titles and legends (default: the run folders' names)",
    )
    parser.set_defaults(handler=run_plot, prog=parser.prog)


def run_plot(args: argparse.Namespace) -> int:
    from transformer.analysis.plotting import plot_runs

    written = plot_runs(args.runs, args.out, args.labels)
    for path in written:
        print(path)
    return 0
