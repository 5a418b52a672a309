"""`sidecar cache ...`: operators' commands against the running daemon's cache socket.

They speak RESP over the cache's unix socket (the same path the daemon listens on, from
`--config` or `--socket`), so they work whether or not the admin endpoint is enabled.
`stats` sends `SIDECAR STATS`, which returns the same JSON as the admin's /cache/stats."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

DEFAULT_SOCKET = "./run/cache.sock"


def _socket_path(config_path: str | None, socket_path: str | None) -> str:
    if socket_path:
        return socket_path
    if config_path is None:
        return DEFAULT_SOCKET
    from sidecar import config as config_module  # the CLI is the top layer: it may
    from sidecar.errors import ConfigError

    try:
        unix = config_module.load(config_path).cache.unix
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if unix is None:
        raise click.ClickException(f"{config_path}: cache.unix is null (no cache socket)")
    return unix


def _client(ctx: click.Context) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    path = _socket_path(ctx.obj.get("config"), ctx.obj.get("socket"))
    # no retries: an operator wants "not running" at once, not after redis-py's backoff
    return redis.Redis(unix_socket_path=path, socket_timeout=5, socket_connect_timeout=5,
                       client_name="sidecar-cli", retry=Retry(NoBackoff(), 0))


def _run(ctx: click.Context, *args: str | bytes) -> Any:
    import redis

    client = _client(ctx)
    try:
        return client.execute_command(*args)
    except redis.ConnectionError as exc:
        path = _socket_path(ctx.obj.get("config"), ctx.obj.get("socket"))
        raise click.ClickException(f"cannot reach the cache at {path}: {exc}") from exc
    except redis.ResponseError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        client.close()


F = TypeVar("F", bound=Callable[..., Any])


def _remember(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        # the group and its subcommands share ctx.obj: given after the subcommand wins
        if value is not None:
            ctx.ensure_object(dict)[name] = value

    return callback


def _where(command: F) -> F:
    """--config and --socket, accepted before the subcommand and after it."""
    command = click.option(
        "--socket", default=None, metavar="PATH", expose_value=False,
        callback=_remember("socket"),
        help=f"Cache socket (overrides --config; default {DEFAULT_SOCKET}).")(command)
    return click.option(
        "--config", type=click.Path(dir_okay=False), default=None, expose_value=False,
        callback=_remember("config"),
        help="Daemon config: the cache socket is its cache.unix.")(command)


@click.group()
@_where
@click.pass_context
def cache(ctx: click.Context) -> None:
    """Inspect and edit the shared cache of a running sidecar."""
    ctx.ensure_object(dict)


@cache.command()
@_where
@click.option("--json", "as_json", is_flag=True, help="Print the raw /cache/stats JSON.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Hits, misses, hit ratio, money saved, memory, L2 state per namespace."""
    raw = _run(ctx, "SIDECAR", "STATS")
    data = orjson.loads(raw)
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    l2 = data.get("l2")
    ratio = data["hit_ratio"]
    click.echo(f"hits {data['hits']}  misses {data['misses']}  hit ratio "
               f"{'-' if ratio is None else f'{ratio:.1%}'}  saved ${data['saved_usd']:.4f}")
    l1 = data["l1"]
    click.echo(f"L1   {l1['items']} items  {l1['bytes']} / {l1['max_bytes']} bytes")
    if l2 is None:
        click.echo("L2   none (memory only)")
    else:
        state = "up" if l2["up"] else "DOWN (serving from memory)"
        click.echo(f"L2   {l2['url']}  {state}  pending {l2['pending_writes']}  "
                   f"replayed {l2['replayed']}  dropped {l2['dropped']}")
    click.echo(f"{'namespace':<20}{'hits L1':>10}{'hits L2':>10}{'misses':>10}{'ratio':>8}"
               f"{'items':>8}{'saved $':>12}")
    for name, ns in data["namespaces"].items():
        ns_ratio = ns["hit_ratio"]
        click.echo(f"{name:<20}{ns['hits']['l1']:>10}{ns['hits']['l2']:>10}{ns['misses']:>10}"
                   f"{'-' if ns_ratio is None else f'{ns_ratio:.0%}':>8}"
                   f"{ns['items']['l1']:>8}{ns['saved_usd']:>12.4f}")


@cache.command()
@_where
@click.argument("key")
@click.pass_context
def get(ctx: click.Context, key: str) -> None:
    """Print KEY's value (exit 1 when there is none)."""
    value = _run(ctx, "GET", key)
    if value is None:
        click.echo("(nil)", err=True)
        sys.exit(1)
    sys.stdout.buffer.write(value + b"\n")
    sys.stdout.flush()


@cache.command(name="set")
@_where
@click.argument("key")
@click.argument("value")
@click.option("--ex", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="Expire after SECONDS (default: the namespace's TTL).")
@click.pass_context
def set_(ctx: click.Context, key: str, value: str, ex: int | None) -> None:
    """Set KEY to VALUE."""
    args: list[str] = ["SET", key, value]
    if ex is not None:
        args += ["EX", str(ex)]
    _run(ctx, *args)
    click.echo("OK")


@cache.command(name="del")
@_where
@click.argument("key")
@click.pass_context
def delete(ctx: click.Context, key: str) -> None:
    """Delete KEY; prints how many keys were removed (0 or 1)."""
    click.echo(str(_run(ctx, "DEL", key)))
