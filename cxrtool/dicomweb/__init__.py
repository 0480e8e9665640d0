"""DICOMweb as a source and a destination (``dicomweb-client``: QIDO-RS, WADO-RS, STOW-RS).

* :mod:`~cxrtool.dicomweb.urls`: ``dicomweb+http(s)://…`` addresses of a study, series or instance.
* :mod:`~cxrtool.dicomweb.connection`: one configured client (TLS, bearer token or basic auth, timeouts).
* :mod:`~cxrtool.dicomweb.source`: the instances of a study, series or QIDO query, listed lazily and
  fetched one at a time by the predict pipeline's decode workers.
* :mod:`~cxrtool.dicomweb.destination`: STOW-RS with retry and a per-object outcome.
* :mod:`~cxrtool.dicomweb.results`: ``--dicom-out dicomweb+…``: SR + SC per predicted film, stored into its study
  batch by batch as the run goes, with a journal that ``--resume`` completes.

Nothing here is imported by ``--help``; ``requests`` and ``dicomweb_client`` load inside the functions.
"""

from cxrtool.dicomweb.urls import SCHEME_PREFIX, DicomwebUrl, is_dicomweb_url, parse_dicomweb_url

__all__ = ["SCHEME_PREFIX", "DicomwebUrl", "is_dicomweb_url", "parse_dicomweb_url"]
