"""Augmentation on ``Sample`` (image + ``Instances``), masks kept as crops (``MaskList``).

One module per kind of transform:

- ``geometric``: moves pixels and mask crops together (``hflip``, ``vflip``, ``rot90``, ``crop``
  exact; ``affine`` resampled), boxes re-derived from the moved masks;
- ``photometric``: changes pixel values only, instances untouched (brightness/contrast/gamma,
  blur, noise, and the colour and stain transforms: gray, invert, stain jitter, channel shuffle);
- ``copy_paste``: a batch transform pasting one image's instances into another;
- ``pipeline``: ``Compose`` and the builders that map an ``AugmentConfig`` to the above;
- ``draws``: the random draws every transform takes from its ``torch.Generator``.

Randomness comes only from the ``torch.Generator`` passed to each call, so a pipeline is
deterministic given its seed (the dataset seeds it from ``(seed, epoch, image index)``).
"""
