"""The ``bench`` command line: the Typer app (:mod:`.app`) and one module per group of commands. Thin: every
command parses its flags into a config and calls the harness; nothing here computes a result.
"""
