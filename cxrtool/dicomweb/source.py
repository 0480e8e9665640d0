"""DICOMweb as a predict input: the instances of a study, a series or a QIDO-RS query, one at a time.

Listing is QIDO-RS in pages (``limit``/``offset``), pulled only as the pipeline asks for the next
job, and each instance is fetched with WADO-RS by the decode worker that decodes it; so the first
prediction never waits for a whole study, and memory holds one page of UIDs plus the instances in
flight.  A job is named by its instance address (``dicomweb+http…/studies/…/series/…/instances/UID``:
UIDs only, no PHI) and sharded by its SOP Instance UID.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.config import PreprocessCfg
from cxrtool.dicomweb.connection import ConnectionOptions, Credentials, check_transport, make_client
from cxrtool.dicomweb.urls import DicomwebUrl, parse_dicomweb_url
from cxrtool.errors import CxrError, ImageLoadError, one_line

if TYPE_CHECKING:
    import numpy as np
    from dicomweb_client import DICOMwebClient

    from cxrtool.trust.gate import HeaderVerdict

#: WADO-RS media types: the instance as stored (compressed stays compressed), else explicit VR little endian
AS_STORED = (("application/dicom", "*"),)
EXPLICIT_LE = (("application/dicom", "1.2.840.10008.1.2.1"),)
#: listed instances whose header-gate reason is kept until predicted (far above the pipeline's films in flight)
GATE_MEMORY = 10_000
#: QIDO-RS results asked for per request
PAGE_SIZE = 100
#: series a predict run never reads: structured reports and other non-image objects
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "SEG", "REG", "RWV", "AU", "ECG", "PLAN"})
#: the header attributes the trust gate reads (cxrtool.trust.gate), asked for in the instance query
GATE_FIELDS = ("Modality", "BodyPartExamined", "ViewPosition", "PatientPosition", "PhotometricInterpretation")


def parse_qido(text: str) -> dict[str, str]:
    """``"ModalitiesInStudy=CR&StudyDate=20261201-"`` -> QIDO-RS study search filters.

    Raises
    ------
    CxrError
        Empty, or a term that is not ``KEY=VALUE``.
    """
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise CxrError(f"--qido wants KEY=VALUE terms joined by &, not {text!r}") from None
    if not pairs or any(not k for k, _ in pairs):
        raise CxrError(f"--qido wants KEY=VALUE terms joined by &, not {text!r}")
    return dict(pairs)


def _value(record: Mapping[str, Any], keyword: str) -> str:
    """One attribute of a QIDO-RS JSON record (``{"0020000D": {"vr": "UI", "Value": [...]}}``) as text."""
    from pydicom.datadict import tag_for_keyword

    item = record.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = item.get("Value") or [""]
    return str(values[0])


@dataclass
class DicomwebSource:
    """The instances behind a DICOMweb address (study, series or instance) or a QIDO query at its root.

    Implements :class:`cxrtool.infer.jobs.JobSource`; :attr:`decoder` is the pipeline's decode
    function and :meth:`header_verdict` its header gate for these jobs.
    """

    url: DicomwebUrl
    options: ConnectionOptions = field(default_factory=ConnectionOptions)
    credentials: Credentials = field(default_factory=Credentials)
    qido: dict[str, str] | None = None
    page_size: int = PAGE_SIZE
    skipped_series: Counter = field(default_factory=Counter)  # modality -> series left out
    _gate: OrderedDict[str, HeaderVerdict] = field(default_factory=OrderedDict, repr=False)
    _client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.qido is not None and self.url.study:
            raise CxrError("--qido searches below the service root; give --dicomweb without /studies/…")
        if self.qido is None and not self.url.study:
            raise CxrError(f"{self.url}: name a study (…/studies/UID) or give a --qido query")
        check_transport(self.url, self.credentials)

    @property
    def client(self) -> DICOMwebClient:
        if self._client is None:
            self._client = make_client(self.url, self.options, self.credentials)
        return self._client

    @property
    def decoder(self) -> InstanceDecoder:
        return InstanceDecoder(self.url, self.options, self.credentials)

    def keeping_decoder(self, folder: Path) -> InstanceDecoder:
        """The decoder that leaves each fetched instance in ``folder`` (a run's private one) for its results."""
        return InstanceDecoder(self.url, self.options, self.credentials, keep=folder)

    def iter_jobs(self) -> Iterator[tuple[str, str]]:
        """Lazily ``(instance address, SOP Instance UID)`` for every image instance, page by page."""
        try:
            yield from self._jobs()
        except CxrError:
            raise
        except Exception as exc:  # the listing itself failed: nothing to predict, a clear message
            raise CxrError(f"{self.url}: QIDO-RS search failed: {describe_http_error(exc)}") from None

    def _jobs(self) -> Iterator[tuple[str, str]]:
        u = self.url
        if u.instance:
            yield u.instance_url(u.study, u.series, u.instance), u.instance  # type: ignore[arg-type]
        elif u.series:
            yield from self._instances(u.study, u.series)  # type: ignore[arg-type]
        elif u.study:
            yield from self._study(u.study)
        else:
            for record in self._pages(
                self.client.search_for_studies, search_filters=self.qido, fields=["StudyInstanceUID"]
            ):
                yield from self._study(_value(record, "StudyInstanceUID"))

    def _study(self, study: str) -> Iterator[tuple[str, str]]:
        from cxrtool.results.layout import SERIES_DESCRIPTION

        fields = ["Modality", "SeriesDescription"]
        for record in self._pages(self.client.search_for_series, study_instance_uid=study, fields=fields):
            modality = _value(record, "Modality").upper()
            if modality in NON_IMAGE_MODALITIES or _value(record, "SeriesDescription") in SERIES_DESCRIPTION.values():
                self.skipped_series[modality or "?"] += 1  # cxrtool's own results never become inputs
                continue
            yield from self._instances(study, _value(record, "SeriesInstanceUID"))

    def _instances(self, study: str, series: str) -> Iterator[tuple[str, str]]:
        from pydicom import Dataset

        from cxrtool.trust.gate import HeaderVerdict, header_problems, header_view

        for record in self._pages(
            self.client.search_for_instances,
            study_instance_uid=study,
            series_instance_uid=series,
            fields=list(GATE_FIELDS),
        ):
            sop = _value(record, "SOPInstanceUID")
            name = self.url.instance_url(study, series, sop)
            header = Dataset()
            for keyword in GATE_FIELDS:
                if value := _value(record, keyword):
                    setattr(header, keyword, value)
            problems = header_problems(header)
            self._gate[name] = HeaderVerdict("; ".join(problems) if problems else None, header_view(header))
            if len(self._gate) > GATE_MEMORY:  # jobs that --shard or --resume left out are never asked for
                self._gate.popitem(last=False)
            yield name, sop

    def _pages(self, search, **kwargs) -> Iterator[Mapping[str, Any]]:
        offset = 0
        while True:
            page = search(limit=self.page_size, offset=offset, **kwargs)
            yield from page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def header_verdict(self, name: str) -> HeaderVerdict | None:
        """The header gate's verdict for a listed instance (from the attributes QIDO-RS returned), once."""
        return self._gate.pop(name, None)


class InstanceDecoder:
    """The decode function for DICOMweb jobs: WADO-RS fetch into a private file, then the file loader.

    Picklable (the decode workers receive it); each process builds its own client on first use.  With
    ``keep`` (a run-private folder, ``predict --dicom-out dicomweb+…``) the fetched instance stays at
    :func:`kept_path` until the run has stored its results and deletes it, so no film is fetched twice;
    without, it is deleted as soon as it is decoded.
    """

    def __init__(
        self, root: DicomwebUrl, options: ConnectionOptions, credentials: Credentials, keep: Path | None = None
    ):
        self.root, self.options, self.credentials, self.keep = root, options, credentials, keep
        self._client: DICOMwebClient | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __call__(self, name: str, cfg: PreprocessCfg) -> np.ndarray:
        from cxrtool.preprocess import load_input

        if self._client is None:
            self._client = make_client(self.root, self.options, self.credentials)
        if self.keep is not None:
            return load_input(fetch_to(self._client, name, kept_path(self.keep, name)), cfg)
        with fetched(self._client, name) as path:
            return load_input(path, cfg)


def kept_path(folder: Path, name: str) -> Path:
    """Where a run keeps the fetched instance ``name`` (a digest of the address: no UID in a file name)."""
    return Path(folder) / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.dcm"


def describe_http_error(exc: BaseException) -> str:
    """A one-line reason for a failed request: status and reason, or the connection error (never headers)."""
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    return one_line(f"{type(exc).__name__}: {exc}")


def fetch_to(client: DICOMwebClient, name: str, path: Path) -> Path:
    """Fetch one instance (its stored transfer syntax) into ``path``, whole or not at all; returns ``path``.

    Raises
    ------
    ImageLoadError
        The address is not an instance's, or the server did not deliver it.
    """
    address = parse_dicomweb_url(name)
    if not address.instance:
        raise ImageLoadError(name, "not a DICOMweb instance address")
    from pydicom.errors import InvalidDicomError

    from cxrtool.fsutil import atomic_path

    uids = (address.study, address.series, address.instance)
    try:
        try:
            ds = client.retrieve_instance(*uids, media_types=AS_STORED)
        except InvalidDicomError:  # stored without a file meta header (ACR-NEMA): let the server re-encode it
            ds = client.retrieve_instance(*uids, media_types=EXPLICIT_LE)
    except Exception as exc:
        raise ImageLoadError(name, f"WADO-RS retrieve failed: {describe_http_error(exc)}") from None
    with atomic_path(path) as tmp:
        ds.save_as(tmp)
    return path


@contextmanager
def fetched(client: DICOMwebClient, name: str) -> Iterator[Path]:
    """Fetch one instance into a temporary file readable only by this user, deleted when the context ends.

    Raises
    ------
    ImageLoadError
        The address is not an instance's, or the server did not deliver it.
    """
    with tempfile.TemporaryDirectory(prefix="cxrtool-dicomweb-") as folder:
        yield fetch_to(client, name, Path(folder) / "instance.dcm")
