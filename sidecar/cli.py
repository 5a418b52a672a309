"""Command line: `sidecar run | validate | send-test | redact | version | cache ...`."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from sidecar import __version__
from sidecar.cache.cli import cache as cache_cli
from sidecar.errors import ConfigError

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML config file (every key has a default; omit for the embedded defaults).",
)
SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override one config key (repeatable), e.g. --set admin.endpoint=127.0.0.1:9999",
)


def _fail(messages: list[str], code: int) -> NoReturn:
    """One `error: ...` line per message on stderr, then exit with `code`."""
    from sidecar.config import printable

    for message in messages:
        click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Local telemetry sidecar for LLM-agent applications."""


main.add_command(cache_cli)


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
        cfg = config_module.load(config_path, overrides)
        from sidecar.app import build_daemon

        build_daemon(cfg)
    except ConfigError as exc:
        _fail([str(problem) for problem in exc.problems], 1)
    click.echo(f"{config_path or '<defaults>'}: configuration is valid")


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None,
              help="Daemon log format (default: service.log_format, json).")
def run(config_path: str | None, overrides: tuple[str, ...], log_format: str | None) -> None:
    """Run the daemon until SIGTERM/SIGINT, then drain and exit 0."""
    from sidecar import config as config_module
    from sidecar.app import run as run_app
    from sidecar.app import run_event_loop
    from sidecar.errors import StartupError
    from sidecar.telemetry.logs import setup_logging

    try:
        cfg = config_module.load(config_path, overrides)
    except ConfigError as exc:
        _fail([str(problem) for problem in exc.problems], 1)
    fmt = log_format or cfg.service.log_format
    setup_logging("json" if fmt == "json" else "text", cfg.service.log_level)
    try:
        run_event_loop(run_app(cfg, lambda line: click.echo(line)))
    except StartupError as exc:
        _fail([str(exc)], 2)


@main.command("send-test")
@click.option("--endpoint", default=None,
              help="Receiver (default http://127.0.0.1:4318, or 127.0.0.1:4317 for gRPC).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http")
@click.option("--runs", default=3, show_default=True, help="Agent runs to send.")
def send_test(endpoint: str | None, protocol: str, runs: int) -> None:
    """Send a realistic sample of LLM-agent spans and logs to the local receivers."""
    from sidecar.sendtest import send

    target = endpoint or ("http://127.0.0.1:4318" if protocol == "http" else "127.0.0.1:4317")
    try:
        spans, records = send(target, protocol, runs)
    except Exception as exc:  # any transport failure is reported as one line
        click.echo(f"error: could not send to {target} ({protocol}): {exc}", err=True)
        sys.exit(1)
    click.echo(f"sent {spans} spans and {records} log records from {runs} agent runs "
               f"to {target} ({protocol})")


@main.command()
@CONFIG_OPTION
@SET_OPTION
def redact(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Redact stdin to stdout with the config's `processors.redact` rules: one OTLP/JSON
    request, or NDJSON / text lines (each redacted as a log body). Counts go to stderr."""
    from sidecar import config as config_module
    from sidecar.processors.redact import RedactSettings
    from sidecar.processors.redact_cli import LineRedactor

    try:
        cfg = config_module.load(config_path, overrides)
    except ConfigError as exc:
        _fail([str(problem) for problem in exc.problems], 1)
    settings = cfg.processors.get("redact")
    assert isinstance(settings, RedactSettings)
    redactor = LineRedactor(settings)
    lines, errors = redactor.run(sys.stdin.buffer.read())
    for line in lines:
        sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()
    counts = ", ".join(f"{rule}: {n}" for rule, n in sorted(redactor.counts.items()))
    click.echo(f"redacted {sum(redactor.counts.values())} ({counts or 'nothing'})", err=True)
    if errors:
        _fail(errors, 1)
