"""`python -m longrun_client`: the `longrun` command."""

from longrun_client.console import main

main()
