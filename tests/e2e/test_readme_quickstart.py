"""A newcomer's first minutes, as the README's Quickstart tells them: the daemon started by
the Makefile's `run` recipe on the default config and ports, then the README's own commands
run verbatim by bash in the same (temporary) working directory: send-test, the file
export, /metrics, and `sidecar tail` showing records live."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- quickstart: tests/e2e/test_readme_quickstart.py runs these commands -->"


def wait_metric(pattern: str, seconds: float = 30.0) -> bool:
    """Whether a line of the admin server's /metrics matches `pattern` within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5) as r:
                if re.search(pattern, r.read().decode(), re.M):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(MARK) + r"\n```sh\n(.*?)```", text, re.S)
    assert block, "the README's quickstart block is gone"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


def run_recipe() -> str:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.M)
    assert recipe
    return recipe.group(1).replace("$(VENV)", ".venv")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "config").symlink_to(ROOT / "config")
    return tmp_path


def sh(command: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_the_readme_quickstart_works(workdir: Path) -> None:
    busy = [p for p in (4317, 4318, 9464) if not port_free(p)]
    assert not busy, f"the quickstart uses the default ports; in use here: {busy}"
    commands = readme_commands()
    assert [c.split()[0] for c in commands] == [
        ".venv/bin/sidecar", "head", "curl", ".venv/bin/sidecar"]
    daemon = subprocess.Popen(["bash", "-c", f"exec {run_recipe()}"], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):  # bounded: 20 s to become ready
            if sh("curl -sf http://127.0.0.1:9464/readyz", workdir).returncode == 0:
                break
            time.sleep(0.1)
        send, head, curl, tail = commands
        sent = sh(send, workdir)
        assert sent.returncode == 0, sent.stderr
        # cost is on by default: the sample's model calls were priced
        charged = re.search(r"priced their model calls at \$(\d+\.\d+)", sent.stdout)
        assert charged, sent.stdout
        assert float(charged.group(1)) > 0, sent.stdout
        for _ in range(100):  # bounded: the file exporter flushes its batch
            exported = workdir / "data" / "export" / "traces.jsonl"
            if exported.exists() and exported.stat().st_size:
                break
            time.sleep(0.1)
        shown = sh(head, workdir)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith('{"resourceSpans"')
        metrics = sh(curl, workdir)
        assert 'signal="traces"' in metrics.stdout, metrics.stdout
        # tail is live: started, fed by another send-test, then stopped (the user's Ctrl-C)
        viewer = subprocess.Popen(["bash", "-c", f"exec {tail} --color never"], cwd=workdir,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # bounded waits on the daemon's own counters (a loaded machine starts tail slowly)
        assert wait_metric(r"^sidecar_tail_subscribers 1\.0$"), "tail never subscribed"
        assert sh(send, workdir).returncode == 0
        assert wait_metric(r"^sidecar_tail_items_sent_total [1-9]"), "nothing reached tail"
        time.sleep(0.5)  # the printed lines are flushed on the way out as well
        viewer.terminate()
        out, err = viewer.communicate(timeout=20)
        # the second send-test's log records, as the live view prints them
        assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} (INFO|WARN) +feedback-app ", out, re.M), \
            out + err
    finally:
        daemon.terminate()
        daemon.communicate(timeout=40)
    assert daemon.returncode == 0
