"""Training engine: ``python train.py CONFIG [--resume] [--set k=v ...]`` (or under ``torchrun``).

- ``trainer.py``: ``Trainer(cfg).train()``: the loop (AMP, accumulation, clipping, NaN guard),
  periodic checkpoints and validation, exact resume.
- ``schedule.py``: optimiser (SGD / AdamW, no decay on norm/bias) and warmup + multistep/cosine.
- ``checkpoint.py``: atomic writes, RNG state, the run folder's files, ``load_model(path, device)``.
- ``distributed.py``: process group set-up (torchrun ``env://`` or explicit) and collectives.
- ``validate.py``: prediction -> submission post-processing -> Kaggle metric, sharded over ranks.
- ``curves.py``: ``metrics.jsonl`` and the Pillow loss/validation plot.

The command line, its process set-up and exit codes: ``maskrcnn.cli.train``.
"""
