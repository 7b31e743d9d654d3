"""``python -m fleet``: the same command line as the ``fleet`` script."""

from fleet.cli import main

main()
