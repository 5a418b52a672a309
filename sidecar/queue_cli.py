"""`sidecar queue check|stats` (offline inspection of the durable queue) and
`sidecar dlq list|show|replay|purge` (dead letters). Both read `storage.dir` from the
config (or `--dir`); run `queue` commands while the daemon is stopped for exact numbers."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from sidecar.errors import ConfigError

DIR_OPTION = click.option("--dir", "storage_dir", type=click.Path(file_okay=False),
                          default=None, help="storage.dir to read (default: from the config).")
CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             default=None, help="YAML config file.")
SET_OPTION = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                          help="Override one config key (repeatable).")


def _fail(message: str, code: int = 1) -> NoReturn:
    from sidecar.config import printable

    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def _storage(config_path: str | None, overrides: tuple[str, ...],
             storage_dir: str | None) -> Path:
    if storage_dir is not None:
        return Path(storage_dir)
    from sidecar import config as config_module

    try:
        return config_module.load(config_path, overrides).storage.dir
    except ConfigError as exc:
        _fail(str(exc))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- queue ------------------------------------------------------------------------------
@click.group()
def queue() -> None:
    """Inspect the durable queue under storage.dir (offline)."""


def _logs(root: Path) -> list[Path]:
    base = root / "queue"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


@queue.command()
@CONFIG_OPTION
@SET_OPTION
@DIR_OPTION
def check(config_path: str | None, overrides: tuple[str, ...], storage_dir: str | None) -> None:
    """Verify every record's checksum; exit 1 if any damage is found (the daemon skips
    damaged records and starts anyway)."""
    from sidecar.exporthelper import wal

    root = _storage(config_path, overrides, storage_dir)
    damaged = 0
    logs = _logs(root)
    if not logs:
        click.echo(f"{root}: no queue")
    for directory in logs:
        last = 0
        records = 0
        for first_seq, path in wal.list_segments(directory):
            result = wal.scan(path, first_seq, last)
            records += len(result.segment.seqs)
            last = max(last, result.segment.last_seq)
            damaged += result.corrupt
            for problem in result.problems:
                click.echo(f"{directory.name}: {problem}")
        click.echo(f"{directory.name}: {records} good records")
    if damaged:
        click.echo(f"{damaged} damaged regions (skipped and counted when the daemon starts)")
        sys.exit(1)
    click.echo("ok")


@queue.command()
@CONFIG_OPTION
@SET_OPTION
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def stats(config_path: str | None, overrides: tuple[str, ...], storage_dir: str | None,
          as_json: bool) -> None:
    """Records, bytes and age per signal log, and what each exporter has left."""
    from sidecar.exporthelper import wal

    root = _storage(config_path, overrides, storage_dir)
    out: dict[str, object] = {}
    for directory in _logs(root):
        seqs: list[tuple[int, int, int, float]] = []
        disk = 0
        last = 0
        for first_seq, path in wal.list_segments(directory):
            result = wal.scan(path, first_seq, last)
            segment = result.segment
            disk += segment.size
            last = max(last, segment.last_seq)
            seqs.extend(zip(segment.seqs, segment.lengths, segment.items, segment.times,
                            strict=True))
        cursors: dict[str, object] = {}
        cursor_dir = directory / "cursors"
        for path in sorted(cursor_dir.glob("*.json")) if cursor_dir.is_dir() else []:
            try:
                state = json.loads(path.read_text())
                nxt, unacked = int(state["next"]), set(state["unacked"])
            except (OSError, ValueError, KeyError, TypeError):
                cursors[path.stem] = "unreadable"
                continue
            left = [(s, n, i) for s, n, i, _ in seqs if s >= nxt or s in unacked]
            cursors[path.stem] = {"records": len(left), "items": sum(i for _, _, i in left),
                                  "bytes": sum(n for _, n, _ in left)}
        out[directory.name] = {
            "disk_bytes": disk, "records": len(seqs), "items": sum(r[2] for r in seqs),
            "oldest": _when(seqs[0][3]) if seqs else None,
            "newest": _when(seqs[-1][3]) if seqs else None, "exporters": cursors}
    if as_json:
        click.echo(json.dumps(out))
        return
    if not out:
        click.echo(f"{root}: no queue")
    for name, info in out.items():
        assert isinstance(info, dict)
        click.echo(f"{name}: {info['records']} records, {info['items']} items, "
                   f"{info['disk_bytes']} bytes on disk, oldest {info['oldest']}")
        for exporter, left in info["exporters"].items():
            click.echo(f"  {exporter}: {left}")


# --- dlq --------------------------------------------------------------------------------
@click.group()
def dlq() -> None:
    """Dead letters: batches a destination refused for good."""


@dlq.command("list")
@CONFIG_OPTION
@SET_OPTION
@DIR_OPTION
def dlq_list(config_path: str | None, overrides: tuple[str, ...],
             storage_dir: str | None) -> None:
    """One line per dead letter: id, exporter, signal, items, reason, time."""
    from sidecar.exporthelper.deadletter import list_letters

    letters, problems = list_letters(_storage(config_path, overrides, storage_dir) /
                                     "deadletter")
    for letter in letters:
        click.echo(f"{letter.id}  {letter.exporter}  {letter.signal.value}  "
                   f"{letter.items} items  {letter.reason}  {_when(letter.time)}")
    for problem in problems:
        click.echo(f"unreadable: {problem}", err=True)
    click.echo(f"{len(letters)} dead letters", err=True)


def _find(root: Path, ident: str) -> Path:
    from sidecar.exporthelper.deadletter import list_letters

    letters, _ = list_letters(root / "deadletter")
    for letter in letters:
        if letter.id == ident:
            return letter.path
    _fail(f"no dead letter {ident!r} (see `sidecar dlq list`)")


@dlq.command()
@CONFIG_OPTION
@SET_OPTION
@DIR_OPTION
@click.argument("ident")
def show(config_path: str | None, overrides: tuple[str, ...], storage_dir: str | None,
         ident: str) -> None:
    """The header, the vendor's answer and the request (OTLP/JSON) of one letter."""
    from sidecar.exporthelper.deadletter import read_header, read_payload
    from sidecar.model import parse_request
    from sidecar.otlp_json import request_to_json_bytes

    path = _find(_storage(config_path, overrides, storage_dir), ident)
    letter = read_header(path)
    click.echo(f"exporter: {letter.exporter}\nsignal: {letter.signal.value}\n"
               f"items: {letter.items}\nreason: {letter.reason}\ntime: {_when(letter.time)}\n"
               f"answer: {letter.answer}")
    try:
        message = parse_request(letter.signal, read_payload(path))
    except Exception as exc:  # a malformed letter is shown as such, not a traceback
        click.echo(f"request: not parseable: {exc}")
        return
    click.echo(request_to_json_bytes(letter.signal, message).decode())


@dlq.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--exporter", default=None, help="Only this exporter's letters.")
@click.argument("idents", nargs=-1)
def replay(config_path: str | None, overrides: tuple[str, ...], exporter: str | None,
           idents: tuple[str, ...]) -> None:
    """Send dead letters again, each to the exporter that refused it, as configured now
    (fix the cause first). A letter sent successfully is deleted; one refused again stays."""
    import asyncio

    from sidecar import config as config_module

    try:
        cfg = config_module.load(config_path, overrides)
    except ConfigError as exc:
        _fail(str(exc))
    sent, failed = asyncio.run(_replay(cfg, exporter, set(idents)))
    click.echo(f"replayed {sent} dead letters; {failed} failed (kept)")
    if failed:
        sys.exit(1)


async def _replay(cfg: object, only: str | None, idents: set[str]) -> tuple[int, int]:
    from sidecar.component import BuildContext, exporter_factories
    from sidecar.config import Config
    from sidecar.errors import SidecarError
    from sidecar.exporthelper.chain import ExportChain
    from sidecar.exporthelper.deadletter import list_letters, read_payload
    from sidecar.model import Batch

    assert isinstance(cfg, Config)
    letters, _ = list_letters(cfg.storage.dir / "deadletter")
    letters = [x for x in letters if (only is None or x.exporter == only)
               and (not idents or x.id in idents)]
    sent = failed = 0
    chains: dict[str, ExportChain] = {}
    try:
        for letter in letters:
            settings = cfg.exporters.get(letter.exporter)
            if settings is None:
                click.echo(f"{letter.id}: exporter {letter.exporter!r} is not in the config",
                           err=True)
                failed += 1
                continue
            chain = chains.get(letter.exporter)
            if chain is None:
                built = exporter_factories()[settings.type].create(
                    letter.exporter, settings, BuildContext(signals=frozenset({letter.signal})))
                assert isinstance(built, ExportChain)
                chain = chains[letter.exporter] = built
                await chain.sender.start()
            batch = Batch(letter.signal, letter.items, read_payload(letter.path))
            try:
                await chain.sender.send(batch)
            except (SidecarError, OSError) as exc:
                click.echo(f"{letter.id}: {exc}", err=True)
                failed += 1
                continue
            letter.path.unlink(missing_ok=True)
            click.echo(f"{letter.id}: sent {letter.items} items to {letter.exporter}")
            sent += 1
    finally:
        for chain in chains.values():
            await chain.sender.close()
    return sent, failed


@dlq.command()
@CONFIG_OPTION
@SET_OPTION
@DIR_OPTION
@click.option("--exporter", default=None, help="Only this exporter's letters.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.argument("idents", nargs=-1)
def purge(config_path: str | None, overrides: tuple[str, ...], storage_dir: str | None,
          exporter: str | None, yes: bool, idents: tuple[str, ...]) -> None:
    """Delete dead letters (all, an exporter's, or the given ids)."""
    from sidecar.exporthelper.deadletter import list_letters

    root = _storage(config_path, overrides, storage_dir)
    letters, _ = list_letters(root / "deadletter")
    chosen = [x for x in letters if (exporter is None or x.exporter == exporter)
              and (not idents or x.id in idents)]
    if chosen and not yes:
        click.confirm(f"delete {len(chosen)} dead letters?", abort=True)
    for letter in chosen:
        letter.path.unlink(missing_ok=True)
    click.echo(f"deleted {len(chosen)} dead letters")
