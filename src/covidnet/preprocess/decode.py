"""The slices one series' tensor needs, read and scaled to [0, 1], in this process or several.

:func:`read_blocks` reads the needed slices of a series (only the rows and columns under the
crop, except the whole slices the QC samples) into a ``(K, rows, cols)`` float32 array, one
slice after another. :func:`decoded_blocks` does the same with compressed slices spread over
``decode_workers`` processes (this one included): the worker processes write straight into a
memory-mapped temporary file the caller reads, so no pixel crosses a pipe, and this process
takes the chunks of slices that no worker has started yet, so a slow worker on a busy machine
delays nothing. Both give the same array: the decoders run on the same bytes either way.

The worker processes are forked once per process, on the first series that needs them, and
kept for later series. They run only numpy and the decoders (no torch, no threads), which is
what makes forking a threaded process (the KServe server) safe here, as it is for torch's
DataLoader workers; the spawn and forkserver start methods would re-import the caller's
``__main__`` in every worker. Inside a worker process of another pool (the cohort stage's),
decoding stays in that process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidnet.data.pixels import SeriesReadError, read_stored, to_hu
from covidnet.preprocess.array import _to_unit


@dataclass(frozen=True)
class BlockSpec:
    """What reading one needed slice takes, the same for every slice of a series.

    Attributes:
        root: the folder the files' ``path`` values are relative to.
        shape: ``(Rows, Columns)`` of every slice.
        rows, cols: ``(first, stop)`` source rows and columns under the crop.
        hu_min, hu_max: the HU window mapped to [0, 1].
        decoders: as :func:`covidnet.data.pixels.read_stored`.
    """

    root: str
    shape: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]
    hu_min: float
    hu_max: float
    decoders: Mapping[str, Sequence[str]] | None = None


def read_blocks(recs: Sequence[dict], ks: Sequence[int], spec: BlockSpec, whole: frozenset[int],
                out: np.ndarray) -> dict[int, np.ndarray]:
    """Read slices ``recs`` (files-table rows) into ``out[ks]``, in this process.

    Args:
        recs: one files-table row (a dict) per slice, in the order of ``ks``.
        ks: the positions in ``out`` the slices go to.
        spec: rows, columns, window and decoders.
        whole: positions whose slice is read whole, for the QC sample.
        out: ``(K, rows, cols)`` float32, filled in place with values in [0, 1].

    Returns:
        ``{k: (Rows/2, Columns/2) float32 HU}`` for the positions in ``whole`` (every other
        row and column).
    """
    (r0, r1), (c0, c1) = spec.rows, spec.cols
    qc: dict[int, np.ndarray] = {}
    root = Path(spec.root)
    for k, r in zip(ks, recs):
        full = k in whole
        stored = read_stored(root / r["path"], int(r["pixel_offset"]), int(r["bits_stored"]),
                             int(r["pixel_representation"]), spec.shape, rows=None if full else spec.rows,
                             cols=None if full else spec.cols, decoders=spec.decoders)
        if full:
            qc[k] = to_hu(stored[::2, ::2], r["rescale_intercept"], r["rescale_slope"])
            stored = stored[r0:r1, c0:c1]
        out[k] = _to_unit(stored, r["rescale_intercept"], r["rescale_slope"], spec.hu_min, spec.hu_max)
    return qc


def _read_chunk(path: str, shape: tuple[int, int, int], recs: list[dict], ks: list[int], spec: BlockSpec,
                whole: frozenset[int]) -> dict[int, np.ndarray]:
    """In a worker process: :func:`read_blocks` into the caller's memory-mapped file."""
    out = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
    try:
        return read_blocks(recs, ks, spec, whole, out)
    finally:
        del out


_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(processes: int) -> ProcessPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(processes)
        if pool is None:
            # fork: the workers start at once with what this process imported, and no start
            # method that re-imports the caller's __main__ (a script, the KServe server)
            pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork"))
            _POOLS[processes] = pool
        return pool


def _drop_pool(processes: int) -> None:
    with _POOLS_LOCK:
        pool = _POOLS.pop(processes, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def shutdown_pools() -> None:
    """Stop the decoding processes this process started (they are started again when needed)."""
    for n in list(_POOLS):
        _drop_pool(n)


def parallel_workers(decode_workers: int, recs: Sequence[dict], shape: tuple[int, int], min_mpix: float = 0.0) -> int:
    """Processes to decode ``recs`` (slices of ``shape``) with: 1 in a worker process of another
    pool, for native pixel data (read in place, faster than any hand-over), when there are fewer
    compressed slices than processes or they hold under ``min_mpix`` megapixels."""
    if decode_workers <= 1 or multiprocessing.parent_process() is not None:
        return 1
    compressed = sum(1 for r in recs if int(r["pixel_offset"]) < 0)
    if compressed < decode_workers or compressed * shape[0] * shape[1] < min_mpix * 1e6:
        return 1
    return decode_workers


def _chunks(n: int, workers: int) -> list[list[int]]:
    size = max(1, -(-n // (8 * workers)))  # about 8 chunks per process: a late one costs little
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


@contextlib.contextmanager
def decoded_blocks(recs: Sequence[dict], spec: BlockSpec, whole: frozenset[int], workers: int
                   ) -> Iterator[tuple[np.ndarray, dict[int, np.ndarray]]]:
    """The needed slices read into one array, over ``workers`` processes (this one included).

    Yields ``(blocks (K, rows, cols) float32 in [0, 1], qc slices)`` as :func:`read_blocks`;
    ``blocks`` is valid only inside the ``with`` (with several processes it is a memory map of
    a temporary file, removed afterwards: copy what is kept).

    Raises:
        SeriesReadError: a slice cannot be read (from whichever process read it), or a worker
            process died while decoding (the slices' files are named).
    """
    rows, cols = spec.rows, spec.cols
    shape = (len(recs), rows[1] - rows[0], cols[1] - cols[0])
    if workers <= 1:
        out = np.empty(shape, dtype=np.float32)
        yield out, read_blocks(recs, range(len(recs)), spec, whole, out)
        return
    with tempfile.TemporaryDirectory(prefix="covidnet-decode-") as tmp:
        path = str(Path(tmp) / "blocks.f32")
        out = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
        chunks = _chunks(len(recs), workers)
        pool = _pool(workers - 1)
        qc: dict[int, np.ndarray] = {}
        futures = []
        try:
            futures += [pool.submit(_read_chunk, path, shape, [dict(recs[k]) for k in c], c, spec,
                                   frozenset(whole.intersection(c))) for c in chunks]
            for fut, chunk in zip(reversed(futures), reversed(chunks)):  # this process works from the end
                if not fut.cancel():
                    break
                qc.update(read_blocks([recs[k] for k in chunk], chunk, spec, whole, out))
            for fut in futures:
                if not fut.cancelled():
                    qc.update(fut.result())
        except BrokenProcessPool as exc:
            _drop_pool(workers - 1)
            names = ", ".join(str(r["path"]) for r in recs[:3])
            raise SeriesReadError(f"a decoding process died while reading this series' slices ({names}, ...): "
                                  f"{exc}") from exc
        finally:
            for fut in futures:  # after an error: what no worker has started is dropped
                fut.cancel()
        try:
            yield out, qc
        finally:
            del out
