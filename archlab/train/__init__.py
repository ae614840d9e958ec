"""Training and evaluation that scale from one CPU core to ``torchrun`` over many GPUs.

``data`` (datasets and reproducible loading), ``loop`` (the training loop), ``checkpoint`` (atomic, exact
resume), ``distributed`` (DDP under torchrun), ``evaluate`` (top-1/top-5), ``runlog`` (metrics.csv, curves),
``recipe`` (defaults per kind of data and optimizer), ``mixing`` (MixUp / CutMix). The ``archlab train`` /
``archlab eval`` commands are :mod:`archlab.cli.train` and :mod:`archlab.cli.evaluate`.
"""
