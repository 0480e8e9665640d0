"""Typer command line: thin functions that parse options, call the core and render with rich."""
