"""The ``synfer`` command line: one typer app, one module per command group."""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from ..errors import SynferError
from ._common import err_console, state


class _Commands(TyperGroup):
    """Turns a SynferError into one line on stderr and exit status 2 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SynferError as error:
            if state.debug:
                raise
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished shards are kept; rerun the same command to resume")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="synfer",
    cls=_Commands,
    help="Synthetic facial-expression data from AU- and text-conditioned diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    state.debug = debug


def main() -> None:
    """Console-script entry point."""
    app(prog_name="synfer")


# Importing a command module registers its commands on `app`, in this order in --help:
# the dataset's life cycle first, then the helpers.
from . import annotate, train_diffusion, generate, inspect, relabel, train, evaluate, annotator, world, info  # noqa: E402, F401, I001
