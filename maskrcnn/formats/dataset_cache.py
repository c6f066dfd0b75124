"""A compact single-file dataset cache (``.npz``), so a dataset travels small.

What it holds:

- 8-bit images as lossless WebP (default; about 13% smaller than PNG on DSB2018) or PNG, in
  grayscale when the channels are equal (most DSB2018 images are gray stored as RGBA), else RGB;
  16-bit grayscale as 16-bit PNG; anything else as zlib-compressed float32. Never lossy: the
  cache reads back exactly what the reader yielded;
- each mask as its tight box (``x0, y0, x1, y1``) and the bits inside it, all bit-packed in one
  array (``np.packbits``) and deflated by ``np.savez_compressed``;
- labels, class names, image ids, split strata and small per-image metadata (json).

``CacheDataset`` (``data.format: cache``, ``data.root: file.npz``) yields the same ``Sample``s as
the source reader (image, boxes, labels, masks; crops padded by one pixel).

Command line (``maskrcnn/cli/make_cache.py``)::

    python -m maskrcnn make_cache --format dsb2018 --root ../shared/data/dsb2018/stage1_train --out dsb2018.npz

Scale: writing and reading hold one image's work at a time, never the dataset's (images are
encoded in ``--workers`` processes and streamed to the file; ``CacheDataset`` maps the stored
image bytes from the file and keeps the masks bit-packed), so a LIVECell-sized cache (5,239
images, 1.6 million cells) is built and read in bounded memory (``bench/livecell_scale.py``).
"""
from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from typing import Optional, Sequence

import numpy as np
import torch

from maskrcnn.errors import InputError
from maskrcnn.fileio import atomic_open
from maskrcnn.formats.image_files import convert_channels, decode_image_bytes, encode_png, is_gray
from maskrcnn.progress import track
from maskrcnn.structures import Instances, MaskList, Sample

CACHE_VERSION = 1
CODEC_PNG8, CODEC_PNG16, CODEC_RAW, CODEC_WEBP = 0, 1, 2, 3
IMAGE_CODECS = ("webp", "png")


def _encode_webp(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Lossless WebP's quality is its compression effort: 25 gives the size of 100 within 0.5% on
    # DSB2018 images (1.10 vs 1.10 MB on 21) and LIVECell-like 520x704 ones, 4-15x faster.
    Image.fromarray(arr).save(buf, format="WEBP", lossless=True, quality=25, method=4, exact=True)
    return buf.getvalue()


def _encode_image(image: torch.Tensor, codec: str = "webp"):
    """``(codec id, bytes)`` for ``image (Tensor[C, H, W])`` in [0, 1], lossless; ``codec`` for 8-bit data."""
    img = image.detach().float().cpu()
    if is_gray(img):
        img = img[:1]
    a = img.numpy()
    q8 = np.round(a * 255.0)
    if np.array_equal(q8 / 255.0, a.astype(np.float64)) or np.array_equal((q8 / 255.0).astype(np.float32), a):
        u8 = q8.astype(np.uint8)
        arr = np.ascontiguousarray(u8[0] if u8.shape[0] == 1 else u8.transpose(1, 2, 0))
        if codec == "webp":
            return CODEC_WEBP, _encode_webp(arr)
        return CODEC_PNG8, encode_png(arr, compress_level=9)
    q16 = np.round(a * 65535.0)
    if a.shape[0] == 1 and np.array_equal((q16 / 65535.0).astype(np.float32), a):
        return CODEC_PNG16, encode_png(q16[0].astype(np.uint16), compress_level=9)
    buf = io.BytesIO()
    np.save(buf, a.astype(np.float32))
    return CODEC_RAW, zlib.compress(buf.getvalue(), 9)


def _decode_image(codec: int, data: bytes, channels: int, where: str) -> torch.Tensor:
    if codec in (CODEC_PNG8, CODEC_PNG16, CODEC_WEBP):
        img = decode_image_bytes(data, None, where)
    elif codec == CODEC_RAW:
        img = torch.from_numpy(np.load(io.BytesIO(zlib.decompress(data))))
    else:
        raise ValueError(f"{where}: unknown image codec {codec}")
    return convert_channels(img, channels, where)


def _encode_sample(reader, i: int, image_codec: str):
    """One image's cache record: codec, image bytes, channels, size, labels, boxes, mask bits, meta."""
    s = reader.load(i)
    codec, blob = _encode_image(s.image, image_codec)
    m = s.instances.masks
    labels = boxes = None
    bits = np.zeros(0, dtype=bool)
    if m is not None and len(m):
        m = m.threshold()
        tb = m.tight_boxes().long()  # x0 y0 x1 y1 in image pixels
        rel = tb - m.origins.repeat(1, 2)
        _, h, w = m.crops.shape
        yy = torch.arange(h)[None, :, None]
        xx = torch.arange(w)[None, None, :]
        inbox = (yy >= rel[:, 1, None, None]) & (yy < rel[:, 3, None, None]) \
            & (xx >= rel[:, 0, None, None]) & (xx < rel[:, 2, None, None])
        # Boolean indexing walks instance, row, column: each tight window row-major, in order.
        bits = m.crops[inbox].numpy()
        labels = s.instances.labels.numpy().astype(np.int16)
        boxes = tb.numpy().astype(np.int32)
    meta = {k: v for k, v in s.meta.items() if k in ("cell_type", "source", "unlabeled")}
    if "path" in s.meta:
        meta["source"] = os.path.relpath(s.meta["path"], getattr(reader, "root", os.getcwd()))
    return codec, blob, int(s.image.shape[0]), tuple(s.instances.image_size), labels, boxes, bits, meta


_WORKER_READER = None  # the reader, inherited by forked cache-writing workers


def _init_worker() -> None:
    torch.set_num_threads(1)  # processes already fill the CPUs; threads on tiny tensors would oversubscribe


def _encode_in_worker(job):
    i, image_codec = job
    return _encode_sample(_WORKER_READER, i, image_codec)


def _npy_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(name + ".npy", "w", force_zip64=True) as f:  # deflated (the ZipFile's default)
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def write_cache(reader, out: str, image_codec: str = "webp", progress: bool = False, workers: int = 0) -> dict:
    """Write every image of ``reader`` (``load``, ``image_ids``, ``class_names``, ``strata``) to ``out`` (.npz).

    ``image_codec``: ``webp`` (lossless, smallest) or ``png`` for 8-bit images. ``workers > 0``
    encodes images in that many forked processes (the reader is inherited, not pickled); the
    file is the same for any number of workers.

    Memory stays bounded by one image's work, not the dataset's: encoded images go to a temporary
    file beside ``out`` as they come, mask bits are packed as they come, and the ``.npz`` is
    written member by member (``image_bytes`` stored uncompressed, so that a reader can map it
    from the file instead of loading it; the other arrays deflated as ``np.savez_compressed``).
    Returns a small summary dict (counts and byte sizes).
    """
    global _WORKER_READER
    _check_codec(image_codec)
    n = len(reader)
    blob_path = out + ".images.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    pool = None
    if workers > 0 and n > 1:
        import multiprocessing as mp

        _WORKER_READER = reader
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
        records = pool.imap(_encode_in_worker, ((i, image_codec) for i in range(n)), chunksize=4)
    else:
        records = (_encode_sample(reader, i, image_codec) for i in range(n))
    table = _CacheTable(n)
    try:
        with open(blob_path, "wb") as blob_file:
            for i, record in enumerate(track(records, "cache", total=n, mode="bar" if progress else "off")):
                table.add(i, record, blob_file)  # one image at a time
        if pool is not None:
            pool.close()
            pool.join()
        _write_npz(out, table.arrays(reader), blob_path, int(table.offsets[-1]))
    finally:
        if pool is not None:
            pool.terminate()
        _WORKER_READER = None
        if os.path.exists(blob_path):
            os.remove(blob_path)
    return {"images": n, "instances": int(table.inst_off[-1]), "file_bytes": os.path.getsize(out),
            "image_bytes": int(table.offsets[-1]), "mask_bits": int(table.nbits)}


def _check_codec(image_codec: str) -> None:
    if image_codec not in IMAGE_CODECS:
        raise ValueError(f"image_codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
    if image_codec == "webp":
        from PIL import features

        if not features.check("webp"):
            raise RuntimeError("this Pillow has no WebP support; use image_codec='png' (--image-codec png)")


class _CacheTable:
    """The cache's arrays, filled one image record (``_encode_sample``) at a time; the image bytes
    go to ``blob_file`` and the mask bits are packed as they come."""

    def __init__(self, n: int):
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.codecs = np.zeros(n, dtype=np.uint8)
        self.sizes = np.zeros((n, 2), dtype=np.int32)
        self.inst_off = np.zeros(n + 1, dtype=np.int64)
        self.channels, self.labels, self.boxes, self.packed, self.metas = [], [], [], [], []
        self.carry = np.zeros(0, dtype=bool)  # mask bits not yet packed (fewer than 8)
        self.nbits = 0

    def add(self, i: int, record, blob_file) -> None:
        codec, blob, ch, size, lab, box, bits, meta = record
        blob_file.write(blob)
        self.offsets[i + 1] = self.offsets[i] + len(blob)
        self.codecs[i] = codec
        self.channels.append(ch)
        self.sizes[i] = size
        if lab is not None:
            self.labels.append(lab)
            self.boxes.append(box)
        self.inst_off[i + 1] = self.inst_off[i] + (0 if lab is None else len(lab))
        self.nbits += bits.size
        bits = np.concatenate([self.carry, bits])
        whole = bits.size - bits.size % 8
        self.packed.append(np.packbits(bits[:whole]))
        self.carry = bits[whole:]
        self.metas.append(meta)

    def arrays(self, reader) -> dict:
        """The ``.npz`` members but the image bytes, in file order."""
        info = {
            "version": CACHE_VERSION,
            "class_names": list(reader.class_names),
            "image_ids": list(reader.image_ids),
            "strata": [str(s) for s in reader.strata()],
            "meta": self.metas,
            "channels": max(self.channels) if self.channels else 1,
            "source": type(reader).__name__,
        }
        return dict(
            info=np.frombuffer(json.dumps(info).encode(), dtype=np.uint8),
            image_offsets=self.offsets,
            image_codecs=self.codecs,
            image_sizes=self.sizes,
            inst_offsets=self.inst_off,
            labels=np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int16),
            boxes=np.concatenate(self.boxes) if self.boxes else np.zeros((0, 4), dtype=np.int32),
            mask_bits=np.concatenate(self.packed + [np.packbits(self.carry)]),
            mask_nbits=np.asarray([self.nbits], dtype=np.int64),
        )


def _write_npz(out: str, arrays: dict, blob_path: str, image_bytes: int) -> None:
    """The ``.npz`` at ``out`` (atomically): ``arrays`` deflated, then the images stored (WebP/PNG
    bytes do not deflate), streamed from ``blob_path``."""
    with atomic_open(out, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            _npy_member(zf, name, arr)
        with zf.open(zipfile.ZipInfo("image_bytes.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w",
                     force_zip64=True) as member, open(blob_path, "rb") as src:
            header = {"descr": "|u1", "fortran_order": False, "shape": (image_bytes,)}
            np.lib.format.write_array_header_1_0(member, header)
            while True:
                chunk = src.read(1 << 24)
                if not chunk:
                    break
                member.write(chunk)


def _mapped_member(path: str, member: str) -> Optional[np.ndarray]:
    """A stored (uncompressed) ``.npy`` member of the zip at ``path`` as a read-only ``np.memmap``
    of the file itself (pages shared by every process that reads it), or None when it is compressed."""
    with zipfile.ZipFile(path) as zf:
        try:
            zi = zf.getinfo(member)
        except KeyError:
            return None
        if zi.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(zi.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(zi.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            return None
        shape, fortran, dtype = read_header[version](f)
        if dtype != np.uint8 or fortran or len(shape) != 1:
            return None
        offset = f.tell()
    if shape[0] == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape)


class CacheDataset:
    """Reader of a cache written by ``write_cache``.

    Args:
        path: the ``.npz`` file.
        class_agnostic: relabel everything as one class ``cell``.
        classes: a class order to map the cached class names to (names must exist in the cache).
    """

    def __init__(self, path: str, class_agnostic: bool = False, classes: Sequence[str] = ()):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset cache not found: {path}")
        self.root = path
        try:
            with np.load(path, allow_pickle=False) as z:
                self._info = json.loads(bytes(z["info"]).decode())
                self._image_bytes = _mapped_member(path, "image_bytes.npy")
                if self._image_bytes is None:  # a cache with deflated images (older writer): load them
                    self._image_bytes = z["image_bytes"]
                self._image_offsets = z["image_offsets"]
                self._codecs = z["image_codecs"]
                self._sizes = z["image_sizes"]
                self._inst_offsets = z["inst_offsets"]
                self._labels = z["labels"].astype(np.int64)
                self._boxes = z["boxes"].astype(np.int64)
                self._nbits = int(z["mask_nbits"][0])
                # Kept packed (1 bit per pixel); each image unpacks only its own range.
                self._packed = z["mask_bits"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise InputError(f"{path}: not a readable dataset cache ({type(e).__name__}: {e})") from None
        if self._info.get("version") != CACHE_VERSION:
            raise InputError(f"{path}: cache version {self._info.get('version')}, this code reads {CACHE_VERSION}")
        areas = (self._boxes[:, 2] - self._boxes[:, 0]) * (self._boxes[:, 3] - self._boxes[:, 1])
        self._bit_offsets = np.zeros(areas.size + 1, dtype=np.int64)
        self._bit_offsets[1:] = np.cumsum(areas)
        if self._bit_offsets[-1] != self._nbits or self._packed.size * 8 < self._nbits:
            raise ValueError(f"{path}: mask bits ({self._nbits}) do not match the boxes ({self._bit_offsets[-1]})")
        cached = tuple(self._info["class_names"])
        self.image_ids = list(self._info["image_ids"])
        self.channels = int(self._info["channels"])
        if class_agnostic:
            self.class_names = ("cell",)
            self._label_map = np.zeros(max(len(cached), 1), dtype=np.int64)
        elif classes:
            missing = [c for c in cached if c not in classes]
            if missing:
                raise InputError(f"{path}: cached classes {missing} are not in data.classes {tuple(classes)}")
            self.class_names = tuple(classes)
            self._label_map = np.asarray([self.class_names.index(c) for c in cached], dtype=np.int64)
        else:
            self.class_names = cached
            self._label_map = np.arange(len(cached), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_ids)

    def cell_types(self) -> list:
        """Each image's ``meta["cell_type"]`` (None where it has none), without decoding images."""
        return [m.get("cell_type") for m in self._info["meta"]]

    def strata(self) -> list:
        return list(self._info["strata"])

    def load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        where = f"{self.root}[{image_id}]"
        a, b = int(self._image_offsets[index]), int(self._image_offsets[index + 1])
        image = _decode_image(int(self._codecs[index]), self._image_bytes[a:b].tobytes(), self.channels, where)
        H, W = (int(v) for v in self._sizes[index])
        i0, i1 = int(self._inst_offsets[index]), int(self._inst_offsets[index + 1])
        masks = self._masks(i0, i1, (H, W))
        raw = self._labels[i0:i1]
        # Negative labels (IGNORE_LABEL: pseudo-labelled regions that give no loss) stay as they are.
        labels = torch.from_numpy(np.where(raw < 0, raw, self._label_map[np.maximum(raw, 0)]))
        inst = Instances((H, W), masks.tight_boxes(), labels, None, masks)
        meta = dict(self._info["meta"][index])
        meta.update({"class_names": self.class_names, "cache": self.root})
        meta.setdefault("cell_type", None)
        return Sample(image, inst, image_id, meta)

    def _masks(self, i0: int, i1: int, image_size, pad: int = 1) -> MaskList:
        n = i1 - i0
        if n == 0:
            return MaskList.empty(image_size)
        bx = self._boxes[i0:i1]
        bw = bx[:, 2] - bx[:, 0]
        bh = bx[:, 3] - bx[:, 1]
        h, w = int(bh.max()) + 2 * pad, int(bw.max()) + 2 * pad
        start, stop = int(self._bit_offsets[i0]), int(self._bit_offsets[i1])
        first = start // 8
        bits = np.unpackbits(self._packed[first:(stop + 7) // 8]).astype(bool)[start - 8 * first: stop - 8 * first]
        # Scatter every instance's row-major window into the padded common crop, all at once.
        counts = bw * bh
        inst = np.repeat(np.arange(n), counts)
        local = np.arange(bits.size) - np.repeat(np.cumsum(counts) - counts, counts)
        y = local // bw[inst] + pad
        x = local % bw[inst] + pad
        crops = np.zeros((n, h, w), dtype=bool)
        crops[inst, y, x] = bits
        origins = torch.from_numpy(bx[:, :2] - pad)
        return MaskList(torch.from_numpy(crops), origins, image_size)
