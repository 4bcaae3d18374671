"""Benchmarks of ct-gateway against baselines measured in the same run (``python -m bench``).

* ``intake`` — durable acknowledgements per second of the real gateway against a bare aiohttp
  handler, in alternating rounds; latency at a fixed, open-loop offered rate.
* ``relay`` — time to drain N queued leads through the sandbox against the ideal N / rate.
* ``memory`` — RSS with a million leads queued, bytes on disk per lead, one ``/metrics`` scrape.

Every load targets 127.0.0.1 and is bounded in count and time. Results go to ``bench/results/``.
"""
