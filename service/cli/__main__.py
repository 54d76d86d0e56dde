"""`python -m service.cli`: the `social-api` command (the tests start servers this way)."""

from service.cli import main

main()
