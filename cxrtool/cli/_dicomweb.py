"""DICOMweb options shared by ``predict``, ``explain`` and ``listen``: where secrets are, never the secrets.

Only option types and small parsers: ``cxrtool.dicomweb`` (requests, dicomweb-client) is imported
when a command runs, so ``--help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cxrtool.dicomweb.connection import DEFAULT_TIMEOUT

__all__ = ["DEFAULT_TIMEOUT", "connection_options", "results_destination", "split_inputs"]

if TYPE_CHECKING:
    from cxrtool.dicomweb.connection import ConnectionOptions
    from cxrtool.dicomweb.destination import StowDestination
    from cxrtool.dicomweb.source import DicomwebSource

DicomwebRoot = Annotated[
    Optional[str],
    typer.Option("--dicomweb", help="DICOMweb service root for --qido (dicomweb+https://host/dicom-web)."),
]
Qido = Annotated[
    Optional[str],
    typer.Option(
        "--qido", help="QIDO-RS study query against --dicomweb, e.g. 'ModalitiesInStudy=CR&StudyDate=20261201-'."
    ),
]
CaFile = Annotated[
    Optional[Path], typer.Option("--ca-file", help="PEM CA bundle for HTTPS instead of the system's.", dir_okay=False)
]
TokenEnv = Annotated[
    Optional[str], typer.Option("--token-env", help="Environment variable holding a DICOMweb bearer token.")
]
TokenFile = Annotated[
    Optional[Path], typer.Option("--token-file", help="File holding a DICOMweb bearer token.", dir_okay=False)
]
BasicAuthEnv = Annotated[
    Optional[str],
    typer.Option("--basic-auth-env", help="Environment variable holding user:password (HTTP basic auth)."),
]
BasicAuthFile = Annotated[
    Optional[Path],
    typer.Option("--basic-auth-file", help="File holding user:password (HTTP basic auth).", dir_okay=False),
]
HttpTimeout = Annotated[
    float, typer.Option("--http-timeout", min=0.1, help="Seconds to connect to and wait for the DICOMweb server.")
]


def connection_options(
    ca_file: Path | None,
    token_env: str | None,
    token_file: Path | None,
    basic_auth_env: str | None,
    basic_auth_file: Path | None,
    timeout: float,
) -> ConnectionOptions:
    """The options as the core's frozen record (its checks raise ``CxrError``: a usage error)."""
    from cxrtool.dicomweb.connection import ConnectionOptions

    return ConnectionOptions(
        ca_file=ca_file,
        token_env=token_env,
        token_file=token_file,
        basic_auth_env=basic_auth_env,
        basic_auth_file=basic_auth_file,
        timeout=timeout,
    )


def split_inputs(
    inputs: list[str] | None, dicomweb: str | None, qido: str | None, connection: ConnectionOptions
) -> tuple[list, DicomwebSource | None]:
    """Positional inputs -> files/folders and DICOMweb sources (``dicomweb+…`` addresses, or --dicomweb + --qido).

    Returns the inputs for the core, and the one DICOMweb source (its decoder and header gate drive the run).
    """
    from cxrtool.dicomweb import is_dicomweb_url
    from cxrtool.errors import CxrError

    addresses = [i for i in inputs or [] if is_dicomweb_url(i)]
    files: list = [Path(i) for i in inputs or [] if not is_dicomweb_url(i)]
    if dicomweb is None and qido is None and not addresses:
        if not files:
            raise CxrError("give files or folders, a dicomweb+http(s):// address, or --dicomweb with --qido")
        return files, None
    if (dicomweb is None) != (qido is None):
        raise CxrError("--dicomweb and --qido go together (a study or series address goes in the inputs)")
    if files:
        raise CxrError("a run reads either files or DICOMweb, not both")
    if len(addresses) + (qido is not None) > 1:
        raise CxrError("give one DICOMweb study/series address or one --qido query per run")
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.source import DicomwebSource, parse_qido

    url = parse_dicomweb_url(addresses[0] if addresses else dicomweb)  # type: ignore[arg-type]
    source = DicomwebSource(
        url, connection, connection.credentials(), qido=parse_qido(qido) if qido is not None else None
    )
    return [source], source


def results_destination(
    dicom_out: str | None, web: DicomwebSource | None, connection: ConnectionOptions
) -> StowDestination | None:
    """``--dicom-out``: the STOW-RS destination of a ``dicomweb+`` root; else None, the folder checked writable.

    Films read over DICOMweb get their results back over DICOMweb only (a usage error otherwise).
    """
    from cxrtool.dicomweb import is_dicomweb_url
    from cxrtool.errors import CxrError
    from cxrtool.fsutil import check_writable_output

    if dicom_out is None:
        return None
    if is_dicomweb_url(dicom_out):
        from cxrtool.dicomweb.destination import StowDestination

        return StowDestination.from_address(dicom_out, connection)
    if web is not None:
        raise CxrError("films read over DICOMweb get their results back over DICOMweb: --dicom-out dicomweb+…")
    check_writable_output(Path(dicom_out), "dir")
    return None
