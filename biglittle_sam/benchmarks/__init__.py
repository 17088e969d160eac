"""The project's benchmarks: experiments built on the library, never imported by it.

- :mod:`.toy`: the whole distillation pipeline end to end on synthetic shapes, on CPU (a tiny SAM
  teacher trained from scratch, a ``bl_tiny`` student distilled from it, its ablations and mIoU).
- :mod:`.speed`: measured encoder latency, throughput and memory of SAM against big.LITTLE.
- :mod:`.proxy`: the same pipeline at SAM's token geometry (mostly-background images, SAM-like
  windows, train / dev / test splits), with training-free routers and the share of big-block
  capacity spent on objects.

Each is split into what it runs (settings or rows), how it runs (pipeline or measure) and what it
reports. The command-line tools are ``tools/toy_benchmark.py``, ``tools/proxy_benchmark.py`` and
``tools/benchmark.py``; ``budgets`` and ``stages`` hold what the toy and proxy pipelines share.
"""
