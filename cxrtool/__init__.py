"""cxrtool: chest X-ray classification (COVID-19 / viral pneumonia / normal) with LRP heatmaps.

The package root imports nothing heavy (no torch) so that ``cxrtool --help`` stays fast.
"""

__version__ = "0.1.0"
