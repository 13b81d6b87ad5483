"""``python -m diffjax.cli``: the ``diffjax`` command."""
from diffjax.cli import main

main()
