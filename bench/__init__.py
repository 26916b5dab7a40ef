"""System benchmarks of the FedRA project: wire bytes, client memory, aggregation speed and framework
overhead. Each module runs as ``python -m bench.<name>`` from the repository root and writes
``bench/results/<name>.json``."""
