"""The ``hrx`` command line. ``main.py`` only wires commands; one module per command."""
