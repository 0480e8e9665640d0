"""Explanations: LRP heatmaps for the DenseNet classifiers and the shortcut audit.

Layout follows zennit's: :mod:`.canonizers` (model rewrites), :mod:`.rules` (fast relevance
rules), :mod:`.composites` (which rule goes where, by name), :mod:`.attribution` (the user-facing
:class:`~cxrtool.explain.attribution.Explainer`), :mod:`.audit` and :mod:`.render`.
This package imports torch lazily through its submodules; importing it is cheap.
"""
