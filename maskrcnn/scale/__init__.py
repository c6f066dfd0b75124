"""Beyond one machine, on Dask (the optional ``[distributed]`` extra: dask[distributed], zarr, tifffile).

- ``slide``: one image larger than memory (zarr, OME-Zarr, pyramidal TIFF; ``sources``) predicted in
  overlapping blocks on Dask workers, cells joined across block borders with the tiling's rules,
  a chunked zarr label image and a per-cell CSV (``slide``).
- ``collection``: a folder, glob or list of images on the same engine, resumable, with
  ``predict.py``'s outputs byte for byte (``collection``).
- One model per worker process, loaded once (``workers``).

Command lines: ``python -m maskrcnn scale slide|collection --help`` (``maskrcnn.cli.scale``). The rest of the
package never imports this one, and it imports dask, zarr and tifffile only when it runs.
"""
