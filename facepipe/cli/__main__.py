"""`python -m facepipe.cli`: what the `facepipe` command runs (the tests and the benchmarks start it so)."""

from facepipe.cli.main import main

main()
