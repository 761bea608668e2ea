"""`python -m app.cli`: the `modelfarm` command without the console script."""

from app.cli import main

main()
