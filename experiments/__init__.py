"""The project's experiments: built on the library, never imported by it, and not installed.

They run from a clone of the repository (``make proxy-benchmark``, ``make gpu-check`` or
``python -m``); the wheel holds the library and the user tools only.

- :mod:`.proxy`: the whole distillation pipeline at SAM's token geometry on CPU (mostly-background
  shapes, SAM-like windows, train / dev / test splits): a ``vit_tiny`` teacher trained from
  scratch, a ``bl_tiny`` student distilled from it, its ablations, training-free routers, the
  share of big-block capacity spent on objects, and mIoU. ``python -m experiments.proxy`` runs it;
  ``python -m experiments.proxy.layers`` and ``python -m experiments.proxy.curve`` are its
  diagnostics, ``python -m experiments.proxy.recipes`` writes its stages as recipe files.
- :mod:`.gpu_check`: what a session with one CUDA GPU runs first (``python -m
  experiments.gpu_check``): the CUDA-marked tests, SAM against big.LITTLE, a distillation smoke run.
- :mod:`.stages`, :mod:`.budgets` and :mod:`.assets`: the proxy's training stages, its budget
  checks, and the fp16 copies of its models that the demo ships (``biglittle_sam/assets``).

The encoder speed benchmark a user runs on their own machine is the library's
:mod:`biglittle_sam.speed` (``biglittle-sam-benchmark``).
"""
