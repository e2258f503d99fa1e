"""`python -m ftctl`: the same CLI as the `ftctl` command."""

from ftctl.main import main

main()
