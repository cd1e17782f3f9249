"""`python -m affedge.cli`: the same entry point as the `affedge` command."""

from affedge.cli import main

main()
