"""The project's benchmarks: experiments built on the library, never imported by it.

- :mod:`.toy`: the whole distillation pipeline end to end on synthetic shapes, on CPU (a tiny SAM
  teacher trained from scratch, a ``bl_tiny`` student distilled from it, its ablations and mIoU).
- :mod:`.speed`: measured encoder latency, throughput and memory of SAM against big.LITTLE.
- :mod:`.proxy`: groundwork of a benchmark at a geometry close to SAM's: training-free routers and
  the share of big-block capacity spent on objects.

Each is split into what it runs (settings or rows), how it runs (pipeline or measure) and what it
reports. The command-line tools are ``tools/toy_benchmark.py`` and ``tools/benchmark.py``.
"""
