"""Training and evaluation (import the submodules; this package root stays light)."""
