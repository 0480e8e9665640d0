"""STOW-RS as a destination: result objects into their study, each one acknowledged or reported.

One STOW request per study carries that study's objects.  An object counts as stored only when the
server lists its SOP Instance UID in the response's Referenced SOP Sequence; one that is refused
(Failed SOP Sequence), or that a failed request never delivered, is reported with the reason.
Requests that fail for a transient reason (connection error, timeout, HTTP 408/429/5xx, or a
refusal with an "out of resources" status A7xx) are retried with exponential backoff; result UIDs
are stable (:mod:`cxrtool.results.layout`), so a retry replaces and never duplicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtool.dicomweb.connection import ConnectionOptions, Credentials, check_transport, make_client
from cxrtool.dicomweb.source import describe_http_error
from cxrtool.dicomweb.urls import DicomwebUrl, parse_dicomweb_url
from cxrtool.errors import CxrError, one_line

LOG = logging.getLogger("cxrtool.dicomweb")

#: HTTP statuses worth another try (the server or a proxy is busy, not the request wrong)
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class SendOutcome:
    """What became of one file: ``stored`` (acknowledged by the server) or not, with the reason."""

    path: Path
    stored: bool
    reason: str = ""
    attempts: int = 1

    def __bool__(self) -> bool:
        """True when stored: a list of outcomes reads as the listen outbox's ``list[bool]`` (accepted or not)."""
        return self.stored


@dataclass
class StowDestination:
    """Where results are STOWed: a DICOMweb service root.

    :meth:`describe` and :meth:`send` are the listen outbox's sender interface (``listen --send-to
    dicomweb+…`` builds it with ``attempts=1``: the outbox keeps unsent files and retries them itself).

    Attributes
    ----------
    attempts:
        Requests per study before its unacknowledged objects are reported as failed.
    first_backoff, max_backoff:
        Seconds before the first retry, doubling up to the maximum.
    """

    url: DicomwebUrl
    options: ConnectionOptions = field(default_factory=ConnectionOptions)
    credentials: Credentials = field(default_factory=Credentials)
    attempts: int = 5
    first_backoff: float = 1.0
    max_backoff: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    _client: Any = field(default=None, repr=False)

    @classmethod
    def from_address(cls, text: str, options: ConnectionOptions | None = None, **kwargs: Any) -> StowDestination:
        """``dicomweb+https://host/dicom-web`` -> destination (credentials read once, here).

        Raises
        ------
        CxrError
            Not a service root, or unusable credentials.
        """
        url = parse_dicomweb_url(text)
        if url.study:
            raise CxrError(f"{text}: give the DICOMweb service root; results go into each film's own study")
        options = options or ConnectionOptions()
        destination = cls(url, options, options.credentials(), **kwargs)
        check_transport(url, destination.credentials)
        return destination

    def describe(self) -> str:
        """Where objects go, for log lines: the service root (credentials are never part of it)."""
        return str(self.url)

    __str__ = describe

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.url, self.options, self.credentials)
            self._client.set_http_retry_params(retry=False)  # retries are ours: per object, reported
        return self._client

    def send(self, files: Sequence[Path]) -> list[SendOutcome]:
        """STOW ``files`` (grouped by study), retrying transient failures; one outcome per file, in order."""
        from pydicom import dcmread

        outcomes: dict[Path, SendOutcome] = {}
        studies: dict[str, list[tuple[Path, Any]]] = {}
        for f in files:
            try:
                ds = dcmread(f)
                studies.setdefault(str(ds.StudyInstanceUID), []).append((Path(f), ds))
            except Exception as exc:
                outcomes[Path(f)] = SendOutcome(Path(f), False, f"unreadable: {one_line(exc)}", 0)
        for study, items in studies.items():
            outcomes.update(self._send_study(study, items))
        return [outcomes[Path(f)] for f in files]

    def _send_study(self, study: str, items: list[tuple[Path, Any]]) -> dict[Path, SendOutcome]:
        done: dict[Path, SendOutcome] = {}
        waiting = list(items)
        delay = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            retry, reason = self._store(study, waiting, done, attempt)
            waiting = [(p, ds) for p, ds in waiting if p not in done]
            if not waiting:
                break
            if not retry or attempt == self.attempts:
                for p, _ in waiting:
                    done[p] = SendOutcome(p, False, reason, attempt)
                break
            LOG.warning(
                "STOW-RS to %s: %s; %d object(s) retried in %.1f s (attempt %d of %d)",
                self,
                reason,
                len(waiting),
                delay,
                attempt + 1,
                self.attempts,
            )
            self.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        return done

    def _store(
        self, study: str, items: list[tuple[Path, Any]], done: dict[Path, SendOutcome], attempt: int
    ) -> tuple[bool, str]:
        """One STOW request; fills ``done`` with acknowledged and permanently refused objects.

        Returns whether what is left is worth retrying, and why it is left.
        """
        import requests

        try:
            response = self.client.store_instances([ds for _, ds in items], study_instance_uid=study)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            return status in TRANSIENT_HTTP, f"STOW-RS failed: {describe_http_error(exc)}"
        except (requests.ConnectionError, requests.Timeout) as exc:
            return True, f"STOW-RS failed: {describe_http_error(exc)}"
        except Exception as exc:  # a malformed response: report, do not loop on it
            return False, f"STOW-RS failed: {one_line(f'{type(exc).__name__}: {exc}')}"
        stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("ReferencedSOPSequence", [])}
        refused = {
            str(item.get("ReferencedSOPInstanceUID", "")): item.get("FailureReason")
            for item in response.get("FailedSOPSequence", [])
        }
        transient = False
        for path, ds in items:
            uid = str(ds.SOPInstanceUID)
            if uid in stored and uid not in refused:
                done[path] = SendOutcome(path, True, "", attempt)
            elif uid in refused:
                code = refused[uid]
                if code is not None and 0xA700 <= int(code) <= 0xA7FF:
                    transient = True  # out of resources: the server may take it later
                else:
                    done[path] = SendOutcome(
                        path, False, f"refused by the server (failure reason {_hex(code)})", attempt
                    )
        return transient or any(p not in done for p, _ in items), "not acknowledged by the server"


def _hex(code: Any) -> str:
    return "none given" if code is None else f"0x{int(code):04X}"
