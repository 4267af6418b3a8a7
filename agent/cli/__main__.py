"""``python -m agent.cli``: the same as the ``katago-edge`` command."""

from agent.cli.main import main

main()
