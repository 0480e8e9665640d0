"""One configured ``DICOMwebClient``: TLS trust, credentials and timeouts, decided once per run.

Security defaults: HTTPS verifies the server against the system CA bundle (or ``ca_file``);
credentials come from an environment variable or a file, never from the command line or the
address; a bearer token or password is never sent over plain ``http://`` except to this machine
(loopback); no secret is logged (``dicomweb-client`` logs request headers, so credentials go in
``session.auth``, which it never sees) and :class:`Credentials` hides them from ``repr``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.dicomweb.urls import DicomwebUrl
from cxrtool.errors import CxrError

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

#: seconds to connect and to wait for each response (``requests``' (connect, read) pair)
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach a DICOMweb server: where the secrets are (never the secrets themselves) and TLS trust.

    Attributes
    ----------
    ca_file:
        PEM bundle to verify HTTPS servers with instead of the system's (a private CA).
    token_env, token_file:
        Environment variable or file holding a bearer token (``Authorization: Bearer``).
    basic_auth_env, basic_auth_file:
        Environment variable or file holding ``user:password`` (HTTP basic auth, e.g. Orthanc).
    timeout:
        Seconds to connect and to wait for each response.
    """

    ca_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    basic_auth_env: str | None = None
    basic_auth_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        given = [n for n in ("token_env", "token_file", "basic_auth_env", "basic_auth_file") if getattr(self, n)]
        if len(given) > 1:
            raise CxrError(f"give one credential source, not {' and '.join('--' + n.replace('_', '-') for n in given)}")
        if not self.timeout > 0:
            raise CxrError(f"the HTTP timeout must be a positive number of seconds, not {self.timeout}")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise CxrError(f"{self.ca_file}: --ca-file not found")

    def credentials(self) -> Credentials:
        """Read the secret now (a usage error before any work when it is missing or empty)."""
        if self.token_env or self.token_file:
            return Credentials(token=_secret(self.token_env, self.token_file, "token"))
        if self.basic_auth_env or self.basic_auth_file:
            user, sep, password = _secret(self.basic_auth_env, self.basic_auth_file, "user:password").partition(":")
            if not sep or not user:
                where = f"${self.basic_auth_env}" if self.basic_auth_env else str(self.basic_auth_file)
                raise CxrError(f"{where}: basic auth wants one line user:password")
            return Credentials(user=user, password=password)
        return Credentials()


@dataclass(frozen=True)
class Credentials:
    """A resolved secret; ``repr`` shows only which kind, so a log or traceback never prints it."""

    token: str | None = field(default=None, repr=False)
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "bearer token" if self.token else "basic auth" if self.user else "none"

    def __repr__(self) -> str:
        return f"Credentials({self.kind})"

    def secrets(self) -> list[str]:
        """The secret strings (for tests and for scrubbing messages)."""
        return [s for s in (self.token, self.password) if s]


def _secret(env: str | None, path: Path | None, what: str) -> str:
    if env:
        value = os.environ.get(env, "")
        where = f"${env}"
    else:
        try:
            value = Path(path).read_text(encoding="utf-8")  # type: ignore[arg-type]
        except OSError as exc:
            raise CxrError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
        where = str(path)
    value = value.strip()
    if not value:
        raise CxrError(f"{where}: no {what} (empty or unset)")
    if "\n" in value or "\r" in value:
        raise CxrError(f"{where}: the {what} must be one line")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def system_ca_bundle() -> str | None:
    """The operating system's CA bundle (file or folder), so HTTPS trusts what the machine trusts.

    ``requests`` would otherwise use certifi's copy, which ignores CAs a hospital installed system-wide.
    """
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    if paths.capath and os.path.isdir(paths.capath):
        return paths.capath
    return None


def check_transport(url: DicomwebUrl, credentials: Credentials) -> None:
    """Refuse to send a secret over plain HTTP to another machine (loopback, e.g. a local Orthanc, is fine).

    Raises
    ------
    CxrError
        Credentials, ``http://`` and a host that is not this machine.
    """
    if credentials.kind != "none" and not url.root.startswith("https:") and not _is_loopback(url.host):
        raise CxrError(
            f"{url.host}: refusing to send a {credentials.kind} over plain http:// to another machine; use https://"
        )


def make_client(url: DicomwebUrl, options: ConnectionOptions, credentials: Credentials) -> DICOMwebClient:
    """A ``DICOMwebClient`` for ``url.root`` with the session set up from ``options`` and ``credentials``.

    Raises
    ------
    CxrError
        Credentials would travel over plain HTTP to another machine.
    """
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import add_certs_to_session, create_session, create_session_from_auth

    check_transport(url, credentials)
    from requests.auth import HTTPBasicAuth

    if credentials.token:
        session = create_session_from_auth(_BearerAuth(credentials.token))
    elif credentials.user:
        session = create_session_from_auth(HTTPBasicAuth(credentials.user, credentials.password or ""))
    else:
        session = create_session()
    if options.ca_file is not None:
        add_certs_to_session(session, ca_bundle=str(options.ca_file))
    else:
        session.verify = system_ca_bundle() or True
    return DICOMwebClient(url.root, session=session, timeout=(options.timeout, options.timeout))


class _BearerAuth:
    """``Authorization: Bearer <token>`` on every request: a requests auth callable (``AuthBase``'s protocol).

    requests drops the header on a redirect to another host and does not re-apply ``session.auth`` there.
    """

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"
