"""``python -m gateway.sandbox``: the simulator in its own process."""

from gateway.sandbox.server import main

main()
