"""``python -m experiments.proxy2``: see :mod:`experiments.proxy2.cli`."""

from .cli import main

main()
