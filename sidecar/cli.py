"""Command line: `sidecar run | validate | send-test | prices | redact | pipe | tail | status
| version | cache ...`."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from sidecar import __version__
from sidecar.cache.cli import cache as cache_cli
from sidecar.errors import ConfigError
from sidecar.queue_cli import dlq as dlq_cli
from sidecar.queue_cli import queue as queue_cli

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
main.add_command(queue_cli)
main.add_command(dlq_cli)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"sidecar {__version__}")


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--healthcheck", is_flag=True,
              help="Also ask each exporter's destination whether it would take data (a "
                   "wrong key, an unreachable endpoint), sending no telemetry.")
def validate(config_path: str | None, overrides: tuple[str, ...], healthcheck: bool) -> None:
    """Dry run of `run`: load the config and build every component, start nothing."""
    from sidecar import config as config_module

    try:
        cfg = config_module.load(config_path, overrides)
        from sidecar.app import build_daemon

        build_daemon(cfg)
    except ConfigError as exc:
        _fail([str(problem) for problem in exc.problems], 1)
    click.echo(f"{config_path or '<defaults>'}: configuration is valid")
    from sidecar.config_audit import audit

    for warning in audit(cfg, config_path):
        click.echo(f"warning: {warning}", err=True)
    if healthcheck:
        _healthcheck(cfg.exporters)


def _healthcheck(exporters: dict[str, Any]) -> None:
    import asyncio

    from sidecar.exporters import healthcheck

    results = asyncio.run(healthcheck.check_all(exporters))
    for result in results:
        if result.ok is not False:
            click.echo(f"exporters.{result.name}: {'ok' if result.ok else 'skipped'}: "
                       f"{result.detail}")
    failed = [f"exporters.{r.name}: {r.detail}" for r in results if r.ok is False]
    if failed:
        _fail(failed, 2)


def _own_output_scrubber(cfg: Any, mask: Any) -> Any:
    """What the daemon's own log lines go through: the configured secrets masked, then the
    redaction engine with the config's redact rules (a key or token that reached a log
    message or an exception text is caught like one in telemetry). It does not count in
    the telemetry's redaction metrics; a failure to redact never loses the line (the mask
    alone applies)."""
    from sidecar.processors.redact import RedactSettings
    from sidecar.processors.redact_cli import TextRedactor

    settings = cfg.processors.get("redact")
    if not isinstance(settings, RedactSettings):
        settings = RedactSettings()
    if not settings.enabled:
        return mask
    engine = TextRedactor(settings)

    def scrub(text: str) -> str:
        masked = str(mask(text))
        try:
            return engine(masked)
        except Exception:  # never lose a log line to the scrubber
            return str(masked)

    return scrub


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
    from sidecar.telemetry.secrets import SecretMask, configured_secrets

    try:
        cfg = config_module.load(config_path, overrides)
    except ConfigError as exc:
        _fail([str(problem) for problem in exc.problems], 1)
    fmt = log_format or cfg.service.log_format
    mask = SecretMask(configured_secrets(cfg))
    setup_logging("json" if fmt == "json" else "text", cfg.service.log_level,
                  _own_output_scrubber(cfg, mask))
    try:
        run_event_loop(run_app(
            cfg, lambda line: click.echo(mask(line)), source=(config_path, tuple(overrides)),
            on_reload=lambda new: mask.extend(configured_secrets(new))))
    except StartupError as exc:
        _fail([mask(str(exc))], 2)


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--socket", "socket_path", default=None, metavar="PATH",
              help="The daemon's logs socket (default: receivers.logs.unix of the config).")
@click.option("--tee", is_flag=True, help="Also copy stdin to stdout.")
def pipe(config_path: str | None, overrides: tuple[str, ...], socket_path: str | None,
         tee: bool) -> None:
    """Forward JSON log lines from stdin to a running daemon (`node app.js | sidecar pipe`)."""
    from sidecar import config as config_module
    from sidecar.pipe import main as pipe_main

    if socket_path is None:
        try:
            cfg = config_module.load(config_path, overrides)
        except ConfigError as exc:
            _fail([str(problem) for problem in exc.problems], 1)
        logs = cfg.receivers.logs
        if logs is None or logs.unix is None:
            _fail(["receivers.logs.unix is off in the config: nothing to pipe to "
                   "(or give --socket PATH)"], 1)
        socket_path = logs.unix
    sys.exit(pipe_main(socket_path, tee))


@main.command("send-test")
@click.option("--endpoint", default=None,
              help="Receiver (default http://127.0.0.1:4318, or 127.0.0.1:4317 for gRPC).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http")
@click.option("--runs", default=3, show_default=True, help="Agent runs to send.")
@click.option("--admin", default="http://127.0.0.1:9464", show_default=True,
              help="The daemon's admin server, to read back what it charged.")
def send_test(endpoint: str | None, protocol: str, runs: int, admin: str) -> None:
    """Send a realistic sample of LLM-agent spans and logs to the local receivers."""
    from sidecar.sendtest import priced, send

    target = endpoint or ("http://127.0.0.1:4318" if protocol == "http" else "127.0.0.1:4317")
    before = priced(admin)
    try:
        spans, records = send(target, protocol, runs)
    except Exception as exc:  # any transport failure is reported as one line
        click.echo(f"error: could not send to {target} ({protocol}): {exc}", err=True)
        sys.exit(1)
    click.echo(f"sent {spans} spans and {records} log records from {runs} agent runs "
               f"to {target} ({protocol})")
    after = priced(admin)
    if before is not None and after is not None:
        click.echo(f"the daemon priced their model calls at ${after - before:.6f} "
                   "(sidecar_llm_cost_usd_total on /metrics, service feedback-app)")


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--provider", default=None,
              help="gen_ai.provider.name of the calls (default: guessed from the model name).")
@click.option("--input", "input_tokens", type=click.IntRange(0), default=1_000_000,
              show_default=True, help="Input tokens, cache reads and writes included.")
@click.option("--output", "output_tokens", type=click.IntRange(0), default=1_000_000,
              show_default=True)
@click.option("--cache-read", type=click.IntRange(0), default=0, show_default=True)
@click.option("--cache-write", type=click.IntRange(0), default=0, show_default=True)
@CONFIG_OPTION
@SET_OPTION
def prices(models: tuple[str, ...], provider: str | None, input_tokens: int,
           output_tokens: int, cache_read: int, cache_write: int, config_path: str | None,
           overrides: tuple[str, ...]) -> None:
    """Show what the cost processor charges for MODELS: the matched price entry, its
    per-million prices and their date, and the cost of the given usage (today's prices,
    the config's `processors.cost` overrides applied)."""
    import time

    from sidecar import config as config_module
    from sidecar.processors.genai_usage import canonical_provider
    from sidecar.processors.llm_cost import CostSettings, LlmCost
    from sidecar.processors.prices import quote

    if cache_read + cache_write > input_tokens:
        _fail(["--cache-read plus --cache-write must not exceed --input (input counts "
               "include the cache)"], 1)
    try:
        cfg = config_module.load(config_path, overrides)
    except ConfigError as exc:
        _fail([str(problem) for problem in exc.problems], 1)
    settings = cfg.processors.get("cost")
    assert isinstance(settings, CostSettings)
    book = LlmCost(settings).book
    canonical = canonical_provider(provider) if provider else None
    unknown = []
    for model in models:
        found = quote(book, canonical, model, time.time_ns(), input_tokens=input_tokens,
                      output_tokens=output_tokens, cache_read=cache_read,
                      cache_write=cache_write)
        if found is None:
            unknown.append(model)
            click.echo(f"{model}: no price (provider {canonical or 'guessed'}); add it under "
                       "processors.cost.prices")
            continue
        since = f" since {found.price_date}" if found.price_date else ""
        click.echo(f"{model}: {found.provider_id or 'any provider'} {found.model_id} "
                   f"({found.source}{since})")
        click.echo(f"  prices: {found.rates}")
        click.echo(f"  cost of {input_tokens} input ({cache_read} cache read, {cache_write} "
                   f"cache write) + {output_tokens} output tokens: "
                   f"${found.price.total.normalize():f}")
    if unknown:
        sys.exit(1)


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


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--admin", "admin", default=None, metavar="HOST:PORT",
              help="The daemon's admin server (default: admin.endpoint of the config).")
@click.option("--signal", "signals", type=click.Choice(["traces", "logs"]), multiple=True,
              help="Only this signal (repeatable; default both).")
@click.option("--filter", "filter_expr", default=None, metavar="EXPR",
              help="Only items matching all of: key=value key!=value key~text level>=warn "
                   "(key: name, service, body, level, trace_id or an attribute).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True)
@click.option("--token", envvar="SIDECAR_ADMIN_TOKEN", default=None, metavar="TOKEN",
              help="Bearer token for an admin server that requires one "
                   "(or $SIDECAR_ADMIN_TOKEN).")
def tail(config_path: str | None, overrides: tuple[str, ...], admin: str | None,
         signals: tuple[str, ...], filter_expr: str | None, color: str,
         token: str | None) -> None:
    """Live, coloured view of what the daemon exports (after redaction and cost): logs with
    level colours, spans as a tree per trace. Reads the admin server's /tail feed."""
    from sidecar import config as config_module
    from sidecar.tail import feed_url, run

    if admin is None:
        try:
            cfg = config_module.load(config_path, overrides)
        except ConfigError as exc:
            _fail([str(problem) for problem in exc.problems], 1)
        if cfg.admin.endpoint is None:
            _fail(["admin.endpoint is off in the config: the feed is served there "
                   "(or give --admin HOST:PORT)"], 1)
        admin = cfg.admin.endpoint
    colored = color == "always" or (color == "auto" and sys.stdout.isatty())
    sys.exit(run(feed_url(admin, signals or ("traces", "logs"), filter_expr), colored,
                 token=token))


@main.command()
@click.option("--admin", default="http://127.0.0.1:9464", show_default=True,
              help="The daemon's admin server (https:// when admin.tls is set).")
@click.option("--token", envvar="SIDECAR_ADMIN_TOKEN", default=None,
              help="Bearer token of admin.auth (default: $SIDECAR_ADMIN_TOKEN).")
@click.option("--cacert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CA bundle to verify an https admin server (default: the system's).")
@click.option("--insecure", is_flag=True, help="https without verifying the certificate.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def status(admin: str, token: str | None, cacert: str | None, insecure: bool,
           as_json: bool) -> None:
    """One screen of a running daemon's state from its admin server (/readyz, /metrics,
    /listeners, /spend);
    exit 0 when ready, 1 when not ready, degraded or unreachable."""
    import json

    from sidecar.status import StatusError, fetch, render

    try:
        found = fetch(admin, token, cacert, insecure)
    except StatusError as exc:
        _fail([str(exc)], 1)
    click.echo(json.dumps(found.as_json(), indent=2) if as_json else render(found))
    sys.exit(0 if found.ready else 1)
