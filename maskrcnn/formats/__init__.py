"""File formats, one module each, named after the format; data, evaluation, inference and viz all
read and write through them (docs/conventions.md, Glossary).

- ``kaggle_csv``: Kaggle's mask CSVs of both competitions (submissions and label files);
- ``rle``: the run-length encoding of one mask (the one codec);
- ``dsb_layout``: the 2018 Data Science Bowl's ``<id>/images`` + ``<id>/masks`` folders;
- ``coco_json``: COCO instance annotations and results;
- ``label_images``: integer images, one value per object;
- ``image_files``: PNG / TIFF / JPEG images as ``Tensor[C, H, W]`` in [0, 1];
- ``dataset_cache``: a whole dataset in one ``.npz``;
- ``prediction_cache``: raw validation predictions, one file per image.

They sit below ``data``: they need only ``structures``, ``fileio``, ``errors`` and ``progress``.
"""
