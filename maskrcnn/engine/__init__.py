"""Training engine: ``python train.py CONFIG [--resume] [--set k=v ...]`` (or under ``torchrun``).

- ``trainer.py``: ``Trainer(cfg).train()``: builds the run (run folder, resume, model, data) and
  its loop.
- ``loop.py``: ``TrainLoop`` (steps and hook calls), ``TrainStep`` (AMP, accumulation, clipping)
  and the resumable data stream.
- ``hooks.py``: run files, NaN guard, LR schedule, metrics, progress, validation, checkpoints, curves.
- ``resume.py``: which config changes a resume honours, the checks of the checkpoint, RNG state.
- ``run_directory.py``: the run folder's lock, files and where a run starts. Checkpoints are read
  and written by ``maskrcnn.inference.checkpoint``.
- ``schedule.py``: optimiser (SGD / AdamW, no decay on norm/bias) and warmup + multistep/cosine.
- ``distributed.py``: process group set-up (torchrun ``env://`` or explicit) and collectives.
- ``validate.py``: prediction -> submission post-processing -> Kaggle metric, sharded over ranks.
- ``curves.py``: ``metrics.jsonl`` and the Pillow loss/validation plot.

The command line, its process set-up and exit codes: ``maskrcnn.cli.train``.
"""
