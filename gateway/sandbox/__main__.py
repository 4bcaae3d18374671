"""``python -m gateway.sandbox``: the simulator in its own process."""

from gateway.sandbox.run import main

main()
