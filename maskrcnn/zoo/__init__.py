"""The model zoo: weights that ship with the package, usable by name (``--weights nuclei``,
``maskrcnn.load_model("nuclei")``). See MODEL_ZOO.md.

Each entry ``<name>`` is ``<name>.pth`` (fp16 weights with their config), ``<name>.md`` (its model
card) and, optionally, ``<name>.thresholds.yaml`` (tuned thresholds, applied automatically).
Names are resolved by ``maskrcnn.inference.zoo``; entries are made from a training checkpoint by
``python -m maskrcnn zoo export`` (``maskrcnn.cli.zoo``, ``maskrcnn.zoo.export``).
"""
