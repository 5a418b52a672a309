"""Command line: `sidecar run | validate | send-test | version | cache ...`."""

from __future__ import annotations

import sys

import click

from sidecar import __version__
from sidecar.errors import ConfigError

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML config file (every key has a default; omit for the embedded defaults).",
)
SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override one config key (repeatable), e.g. --set admin.endpoint=127.0.0.1:9999",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Local telemetry sidecar for LLM-agent applications."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"sidecar {__version__}")


@main.command()
@CONFIG_OPTION
@SET_OPTION
def validate(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Dry run of `run`: load the config and build every component, start nothing."""
    from sidecar import config as config_module

    try:
        config_module.load(config_path, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    click.echo(f"{config_path or '<defaults>'}: configuration is valid")
