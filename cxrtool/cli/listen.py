"""``cxrtool listen``: a DICOM Storage SCP that answers every received film with an SR + heatmap SC (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import err, user_errors
from cxrtool.cli._dicomweb import (
    DEFAULT_TIMEOUT,
    BasicAuthEnv,
    BasicAuthFile,
    CaFile,
    HttpTimeout,
    TokenEnv,
    TokenFile,
    connection_options,
)
from cxrtool.cli._options import Backend


def listen(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="cxrtool checkpoint (.safetensors; heatmaps need one) or ONNX file.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for results/, predictions.csv, spool/, outbox/, failed/.")
    ],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port to listen on.")] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This service's AE title.")] = "CXRTOOL",
    bind: Annotated[
        str, typer.Option(help="Address to bind; the default keeps the service on this machine.")
    ] = "127.0.0.1",
    allow: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow", show_default="loopback peers only", help="Accept associations from AET@HOST (repeatable)."
        ),
    ] = None,
    send_to: Annotated[
        Optional[str],
        typer.Option(
            "--send-to",
            help="C-STORE each SR + SC to AET@HOST:PORT (e.g. back to the PACS), "
            "or STOW-RS them to a dicomweb+http(s):// root.",
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", min=1, help="Films spooled but not processed before C-STOREs are refused (A700)."),
    ] = 64,
    backend: Annotated[
        Backend, typer.Option(help="Runtime for the predictions (the heatmap always runs on torch).")
    ] = Backend.auto,
    max_associations: Annotated[
        int,
        typer.Option(
            "--max-associations",
            min=1,
            help="Associations open at once; more are rejected (local limit exceeded).",
        ),
    ] = 10,
    any_called_ae: Annotated[
        bool,
        typer.Option(
            "--any-called-ae",
            help="Accept any called AE title (default: it must be --ae-title, else rejected).",
        ),
    ] = False,
    accept_non_image: Annotated[
        bool,
        typer.Option(
            "--accept-non-image",
            help="Accept SR, presentation states and other non-image objects and ignore them "
            "(default: refused at association).",
        ),
    ] = False,
    tls_cert: Annotated[
        Optional[Path],
        typer.Option(
            "--tls-cert",
            help="PEM certificate: DICOM over TLS (needs --tls-key).",
        ),
    ] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    tls_ca: Annotated[
        Optional[Path],
        typer.Option(
            "--tls-ca",
            help="PEM CA bundle: require client certificates signed by it.",
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="At start, move the films in failed/ back into the spool (after fixing the cause).",
        ),
    ] = False,
    ca_file: CaFile = None,
    token_env: TokenEnv = None,
    token_file: TokenFile = None,
    basic_auth_env: BasicAuthEnv = None,
    basic_auth_file: BasicAuthFile = None,
    http_timeout: HttpTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Receive films over DICOM, write SR + SC for each, optionally send them on; stops cleanly on SIGTERM or Ctrl-C."""
    import logging
    import signal
    import threading

    from cxrtool.errors import CxrError
    from cxrtool.listen import ListenConfig, Listener, TlsFiles, parse_peer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with user_errors():
        if (tls_cert is None) != (tls_key is None) or (tls_ca is not None and tls_cert is None):
            raise CxrError("--tls-cert and --tls-key go together (and --tls-ca needs them)")
        config = ListenConfig(
            model=model,
            out=out,
            port=port,
            ae_title=ae_title,
            bind=bind,
            allow=tuple(parse_peer(a) for a in allow or ()),
            send_to=_destination(
                send_to,
                connection_options(ca_file, token_env, token_file, basic_auth_env, basic_auth_file, http_timeout),
            ),
            max_queue=max_queue,
            backend=backend.value,
            max_associations=max_associations,
            check_called_aet=not any_called_ae,
            accept_non_image=accept_non_image,
            tls=TlsFiles(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None,
            retry_failed=retry_failed,
        )
        listener = Listener(config).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err.print(
        f"cxrtool listen: {ae_title} on {bind}:{listener.port}; SIGTERM or Ctrl-C stops after the current film",
        soft_wrap=True,
    )
    while not stop.wait(1.0):
        pass
    listener.stop()
    worker = listener.worker
    err.print(
        f"stopped: {listener.received} received, {worker.processed} processed, {worker.failed} failed, "
        f"{listener.ignored} non-image ignored, {len(listener.spool)} left in the spool",
        soft_wrap=True,
    )


def _destination(send_to: str | None, connection):
    """``--send-to``: ``AET@HOST:PORT`` (C-STORE) or a ``dicomweb+`` root (STOW-RS; the outbox does the retrying)."""
    from cxrtool.dicomweb import is_dicomweb_url
    from cxrtool.listen import parse_destination

    if send_to is None:
        return None
    if is_dicomweb_url(send_to):
        from cxrtool.dicomweb.destination import StowDestination

        return StowDestination.from_address(send_to, connection, attempts=1)
    return parse_destination(send_to)


def register(app: typer.Typer) -> None:
    """Add ``listen`` to the root app."""
    app.command(no_args_is_help=True)(listen)
