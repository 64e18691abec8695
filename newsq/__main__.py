"""Allows `python -m newsq`, which the demo and tests use to start workers with this interpreter."""

from newsq.cli import main

main()
