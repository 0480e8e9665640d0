"""One static HTML page for a predict run: :mod:`.inputs` reads the rows, :mod:`.html` renders them.

The page is self-contained (thumbnails and heatmap overlays embedded as data URIs, CSS and the
table sorter inline), so it can be mailed, archived or opened from a USB stick with no server
and no network.  The template lives in ``templates/report.html.j2`` (Jinja2, autoescaped).
"""
