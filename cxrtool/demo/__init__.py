"""``cxrtool demo``: the whole workflow on a small licence-clean sample that ships with the package.

:mod:`.workflow` runs it by calling the library's core functions (no subprocesses); ``sample/``
holds the films and ``ATTRIBUTION.md`` lists every file's source and licence;
:mod:`.make_sample` is the maintainer tool that rebuilt them from the project's fixture data.
"""
