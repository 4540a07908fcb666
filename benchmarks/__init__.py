"""Benchmarks and load tests: the gateway against its ceilings (``bench.py``) and a Locust
traffic mix (``locustfile.py``). Not collected by pytest; ``tests/`` smoke-tests the harness."""
