"""``cxrtool listen`` as a process: SIGTERM stops it cleanly and loses nothing that was acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from listen_helpers import free_port, store_all, wait_for

from cxrtool.listen import ListenConfig, Listener
from cxrtool.listen.spool import Spool

TESTS = Path(__file__).resolve().parents[1]
#: the CLI in a fresh interpreter that also knows the test-only ``densenet_tiny`` architecture
LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from tiny_arch import register_tiny_arch; "
    "register_tiny_arch(); from cxrtool.cli.main import app; sys.argv[0] = 'cxrtool'; app()"
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_help_lists_the_security_defaults():
    from typer.testing import CliRunner

    from cxrtool.cli.main import app

    result = CliRunner().invoke(app, ["listen", "--help"])
    text = " ".join(result.output.split())  # help is wrapped to the terminal width
    assert result.exit_code == 0
    assert (
        "[default: 127.0.0.1]" in text and "[default: (loopback peers only)]" in text and "[default: CXRTOOL]" in text
    )
    for option in (
        "--max-associations",
        "--any-called-ae",
        "--accept-non-image",
        "--tls-cert",
        "--tls-key",
        "--tls-ca",
        "--retry-failed",
    ):
        assert option in text


@pytest.mark.parametrize(
    "args, named",
    [
        (["--tls-cert", "server.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-ca", "ca.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "missing.pem"),
    ],
)
def test_tls_misuse_is_a_usage_error_before_any_work(tmp_path, args, named):
    from typer.testing import CliRunner

    from cxrtool.cli.main import app

    result = CliRunner().invoke(
        app, ["listen", "-m", str(tmp_path / "no-model.safetensors"), "-o", str(tmp_path / "out"), *args]
    )
    assert result.exit_code == 2 and named in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()  # refused before the model or the output folder is touched


@pytest.mark.slow  # a fresh interpreter importing torch: 15-40 s on 2 busy cores
def test_sigterm_finishes_and_keeps_the_rest(tiny_listen_ckpt, chest_films, tmp_path):
    out, port = tmp_path / "out", free_port()
    log = open(tmp_path / "listen.log", "w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCH,
            str(TESTS),
            "listen",
            "-m",
            str(tiny_listen_ckpt),
            "-o",
            str(out),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert wait_for(lambda: "SIGTERM or Ctrl-C stops" in (tmp_path / "listen.log").read_text(), timeout=180), (
            tmp_path / "listen.log"
        ).read_text()
        assert store_all(port, chest_films) == [0, 0, 0]  # acknowledged = on disk
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "listen.log").read_text()
    assert "stopped: 3 received" in text, text
    done = len(list((out / "results").glob("*.sr.dcm"))) if (out / "results").exists() else 0
    left = len(Spool(out / "spool").pending())
    assert done + left == 3 and not list((out / "spool").glob(".*"))  # every film is done or still spooled
    listener = Listener(ListenConfig(model=tiny_listen_ckpt, out=out, port=free_port())).start()  # the restart
    try:
        assert wait_for(lambda: not Spool(out / "spool").pending() and listener.worker.processed == left)
    finally:
        listener.stop()
    assert len(list((out / "results").glob("*.sr.dcm"))) == 3
