"""What ``calibrate`` (and train's trust fit) is asked for, apart from the numeric code: ``--help`` reads it cheaply."""

#: the pass quantile of the OOD threshold: this share of the held-out films passes
DEFAULT_QUANTILE = 0.95
#: ``calibrate --fit-split keep``: reuse the model's own Gaussians
KEEP = "keep"
