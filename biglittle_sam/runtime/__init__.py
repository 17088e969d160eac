"""Runtime utilities shared by training, distillation, evaluation and the benchmarks.

One home for what every long-running job needs, so that ``train/``, ``distill/`` and ``eval/``
never import one another for utilities:

- ``distributed``: joining a ``torchrun`` process group (NCCL on GPU, gloo on CPU), sharding work
  over ranks and gathering results on rank 0, and resolving ``--device``;
- ``progress``: the one progress bar (tqdm) and the one duration formatter;
- ``amp``: bf16 autocast with every LayerNorm kept in fp32;
- ``hardware``: the one description of the machine that benchmark reports print.

Modules here import nothing else from the package, so any module may import them.
"""
