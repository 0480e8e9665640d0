"""Where results go and what they are called: UIDs, series, descriptions and file names.

UIDs use the ``2.25`` root (a UUID-derived UID, PS3.5 B.2) from a name-based UUID (RFC 4122
version 5) of fixed inputs: the source's SOP Instance UID (or Study UID for a series), the model id
and the object kind.  (pydicom's ``generate_uid(prefix=None)`` ignores its entropy and is random.)  A rerun with the
same model therefore writes the
same objects under the same UIDs, so a PACS that receives them twice replaces instead of duplicating,
and the file names (derived from the same inputs) let reruns skip what is done.  ``listen`` also
passes a ``content_key`` (a hash of the received film): a film re-sent with the same SOP Instance UID
but new content gets new result UIDs and names, the same content the same ones.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

KINDS = ("sr", "sc")
SERIES_NUMBER = {"sr": 7701, "sc": 7702}
SERIES_DESCRIPTION = {
    "sr": "cxrtool AI result (TID 1500 SR) - NOT FOR CLINICAL USE",
    "sc": "cxrtool LRP heatmap (SC) - NOT FOR CLINICAL USE",
}
MANUFACTURER = "cxrtool"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/cxrtool/cxrtool/dicom-results")


def stable_uid(*parts: str) -> str:
    """``2.25.<UUID as integer>`` for a version-5 UUID of ``parts``: the same inputs, the same UID."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(0).join(parts)).int}"


@dataclass(frozen=True)
class ResultIds:
    """The identifiers of one result object."""

    series_uid: str
    sop_uid: str
    series_number: int
    instance_number: int
    series_description: str


def result_ids(source: Dataset, model_id: str, kind: str, content_key: str = "") -> ResultIds:
    """Stable UIDs and numbers for the ``kind`` object (``sr``/``sc``) made from ``source`` by ``model_id``.

    A non-empty ``content_key`` enters the instance UID (the series stays the study's + model's).
    """
    study = str(source.StudyInstanceUID)
    instance = source.get("InstanceNumber")
    return ResultIds(
        series_uid=stable_uid("series", kind, study, model_id),
        sop_uid=stable_uid("instance", kind, str(source.SOPInstanceUID), model_id, *filter(None, [content_key])),
        series_number=SERIES_NUMBER[kind],
        instance_number=int(instance) if instance not in (None, "") else 1,
        series_description=SERIES_DESCRIPTION[kind],
    )


def result_paths(
    out_dir: str | Path, source_path: str | Path, source: Dataset, model_id: str, content_key: str = ""
) -> dict[str, Path]:
    """``{kind: path}``: ``<source stem>.<digest>.<kind>.dcm``, digest from SOP UID, model (and ``content_key``).

    The digest keeps two films with the same file name apart and identifies the film without putting
    its UID (or anything else from the header) into a file name.
    """
    key = f"{source.get('SOPInstanceUID', '')}\0{model_id}" + (f"\0{content_key}" if content_key else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source_path).stem)[:80] or "film"
    return {kind: Path(out_dir) / f"{stem}.{digest}.{kind}.dcm" for kind in KINDS}


def is_cxrtool_result(ds: Dataset) -> bool:
    """True for an SR/SC cxrtool wrote: a listener never analyses its own results (no loops via PACS routing)."""
    return ds.get("Manufacturer") == MANUFACTURER and ds.get("SeriesDescription") in SERIES_DESCRIPTION.values()
