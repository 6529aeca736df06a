"""Data: preprocessing one long run, and reading clips from the store against what the encoder consumes.

A synthetic whole-brain int16 run on the FSL MNI152 2 mm grid (TR 0.72 s, like HCP) is streamed to
``.nii.gz``, then:

- preprocessed into a store (int8, the default, and float16), against a plain nilearn reslice of the same
  run onto the same grid (no masking, normalisation, TR resampling or storage): seconds and peak RSS;
- ``data-codec-ceiling``: the codec alone decompressing the int8 store's chunks from bytes in memory, one
  process — the most one loader worker could read;
- ``data-read-one-process``: the store's reads of random clips in one process, without a loader;
- ``data-loader-per-worker``: base-size clips (96³ × 20 frames, the stored int8 bytes as training receives
  them) in random order through the training loader (``ClipLoader``) with one worker, cold (the worker
  starting, the store's pages evicted from the page cache first) and warm (a second pass); ``ratio`` = its
  warm clips/s over the ceiling; ``data-loader-per-worker-pytorch-collate`` the same through a plain
  ``DataLoader`` (new shared memory for every batch); ``read-clips-2workers`` the training loader with two,
  ``ratio`` = cold clips/s over the clips/s the base encoder trains at (forward+backward, batch 1, from the
  encoder suite);
- ``data-sustained-<rate>`` for 100, 250 and 1,000 clips/s, and for a rate this machine can feed (80 % of
  what its cores but one read): the workers that rate needs at the measured per-worker rate (capped at
  this machine's cores), and a consumer taking batches of 8 at that rate from
  them: clips/s achieved, the share of batches it waited for, peak host memory of it and its workers.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from pathlib import Path

import numpy as np

from benchmarks.common import median_seconds, record, rss_mib, run_child

FSL_2MM = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
FSL_SHAPE = (91, 109, 91)
TR = 0.72
CLIP_FRAMES = 20


def write_long_run(path: Path, n_frames: int, seed: int = 0) -> None:
    """Stream a whole-brain int16 run to ``path`` frame by frame, never holding it in memory."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask

    from neurostorm.data.grid import Grid, Reslicer

    grid = Grid("fsl", FSL_SHAPE, tuple(map(tuple, FSL_2MM)))
    mask_img = load_mni152_brain_mask(resolution=2)
    brain = Reslicer(mask_img.affine, mask_img.shape, grid, order=0)(np.asarray(mask_img.dataobj, np.float32)) > 0
    header = nib.Nifti1Header()
    header.set_data_shape((*FSL_SHAPE, n_frames))
    header.set_data_dtype(np.int16)
    header.set_qform(FSL_2MM, code=4)
    header.set_sform(FSL_2MM, code=4)
    header.set_xyzt_units("mm", "sec")
    header["pixdim"][4] = TR
    header.set_data_offset(352)
    rng = np.random.default_rng(seed)
    slow = rng.standard_normal(brain.sum()).astype(np.float32)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        header.write_to(handle)
        handle.write(b"\x00" * (352 - handle.tell()))
        for t in range(n_frames):
            frame = np.zeros(FSL_SHAPE, np.int16)
            frame[brain] = (1000 + 15 * slow * np.sin(t / 20) + 10 * rng.standard_normal(brain.sum())).astype(np.int16)
            handle.write(frame.tobytes(order="F"))


def measure_preprocess(source: str, store: str, storage: str, codec: str = "zstd") -> dict:
    from neurostorm.data.preprocess import PreprocessConfig, preprocess
    from neurostorm.data.store import Store

    shutil.rmtree(store, ignore_errors=True)
    baseline = rss_mib()
    config = PreprocessConfig(storage=storage, codec=codec)
    seconds = median_seconds(lambda: preprocess([source], store, config, progress=False), repeats=1, warmup=False)
    run = Store(store).manifest.iloc[0]
    size = sum(p.stat().st_size for p in Path(store).rglob("*") if p.is_file())
    return record(f"preprocess-{storage}{'' if codec == 'zstd' else '-' + codec}", [int(run["n_frames"]), 96, 96, 96],
                  seconds, baseline, store_mib=size / 2**20, rmse_z=float(run["quantization_rmse"]))


def measure_reslice(source: str) -> dict:
    from nilearn.image import resample_img

    from neurostorm.data.grid import MNI152_FSL_2MM_96 as grid

    baseline = rss_mib()
    seconds = median_seconds(lambda: resample_img(source, target_affine=grid.affine, target_shape=grid.shape,
                                                  interpolation="continuous", force_resample=True,
                                                  copy_header=True).get_fdata(dtype=np.float32),
                             repeats=1, warmup=False)
    return record("reslice-nilearn", [*grid.shape], seconds, baseline)


def _evict(store: str) -> None:
    """Drop the store's files from the page cache, so the next read comes from disk."""
    for path in Path(store).rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _clip_order(store: str, clips: int):
    """Every clip start of the store's runs (96³ × 20, stride 1) and a seeded random order of ``clips`` (the
    clips again in new orders when there are fewer)."""
    import torch

    from neurostorm.data.datasets import ClipDataset

    dataset = ClipDataset(store, sequence_length=CLIP_FRAMES, stride=1)
    generator = torch.Generator().manual_seed(0)
    orders = [torch.randperm(len(dataset), generator=generator) for _ in range(-(-clips // len(dataset)))]
    return dataset, torch.cat(orders)[:clips].tolist()


def measure_codec_ceiling(store: str, name: str = "data-codec-ceiling") -> dict:
    """The codec alone: every chunk of the store's first run decompressed from shard bytes already in memory,
    into one frame buffer, in this process; clips/s = frames/s / 20."""

    from neurostorm.data.runs import FrameReader
    from neurostorm.data.store import Store

    opened = Store(store)
    run_id = opened.manifest["run_id"].iloc[0]
    reader = FrameReader(opened.location, run_id, opened.run(run_id))
    chunks = []
    for shard in range(-(-opened.n_frames(run_id) // reader.shard_frames)):
        data = memoryview(Path(reader.shard_path(shard)).read_bytes())
        chunks += [data[o:o + n] for o, n in reader.chunk_index(shard) if o != reader.MISSING]
    frame = np.empty(opened.run(run_id)["bold"].shape[1:], dtype=np.int8)
    baseline = rss_mib()

    def decode_all() -> None:
        for chunk in chunks:
            reader.decoder.decode(chunk, out=frame)

    seconds = median_seconds(decode_all, repeats=3)
    rate = len(chunks) / seconds / CLIP_FRAMES
    return record(name, [len(chunks), *frame.shape], seconds, baseline, clips_per_s=rate,
                  compressed_mib_per_clip=sum(len(c) for c in chunks) / len(chunks) * CLIP_FRAMES / 2**20)


CANDIDATE_CODECS = ("zstd-1", "zstd-3", "zstd-9", "blosc-lz4", "blosc-lz4-shuffle", "blosc-lz4-bitshuffle",
                    "blosc-zstd-bitshuffle")


def _candidate(name: str):
    """The numcodecs codec a candidate name stands for: zstd-LEVEL, or blosc-CNAME[-shuffle|-bitshuffle]."""
    from numcodecs import Blosc, Zstd

    if name.startswith("zstd-"):
        return Zstd(int(name.split("-")[1]))
    _, cname, *shuffle = name.split("-")
    mode = {(): Blosc.NOSHUFFLE, ("shuffle",): Blosc.SHUFFLE, ("bitshuffle",): Blosc.BITSHUFFLE}[tuple(shuffle)]
    return Blosc(cname, 5 if cname == "lz4" else 3, mode)


def measure_codec(store: str, name: str) -> dict:
    """A candidate codec on the int8 store's first 40 frames, one thread: compression (raw over compressed
    bytes), MiB per 20-frame clip, ms to encode a frame, clips/s decoded."""
    import numcodecs.blosc

    from neurostorm.data.store import Store

    numcodecs.blosc.use_threads = False  # one thread, as in one loader worker
    opened = Store(store)
    frames, _ = opened.read_stored(opened.manifest["run_id"].iloc[0], 0, 40)  # (40, X, Y, Z) int8
    codec, baseline = _candidate(name), rss_mib()
    encoded = [codec.encode(np.ascontiguousarray(frame)) for frame in frames]  # also the timing's warm-up
    encode = median_seconds(lambda: [codec.encode(np.ascontiguousarray(frame)) for frame in frames], repeats=3,
                            warmup=False)
    out = np.empty(frames.shape[1:], dtype=frames.dtype)
    decode = median_seconds(lambda: [codec.decode(chunk, out=out) for chunk in encoded], repeats=3)
    size = sum(len(chunk) for chunk in encoded) / len(encoded)
    return record(f"data-codec-{name}", list(frames.shape), decode, baseline,
                  clips_per_s=len(frames) / decode / CLIP_FRAMES, compression=frames[0].nbytes / size,
                  compressed_mib_per_clip=size * CLIP_FRAMES / 2**20, encode_ms_per_frame=encode / len(frames) * 1e3)


def measure_store_reads(store: str, clips: int) -> dict:
    """``Store.read_stored`` of random-order clips in this process, no loader: what the read itself costs
    beside the codec (ranged shard reads, index lookups, Python per clip)."""
    import time

    dataset, order = _clip_order(store, clips)
    baseline = rss_mib()
    dataset[order[0]]  # the run's shard indexes and scales, read once per run
    start = time.perf_counter()
    for item in order:
        dataset[item]
    seconds = time.perf_counter() - start
    return record("data-read-one-process", [clips, 1, CLIP_FRAMES, 96, 96, 96], seconds, baseline,
                  clips_per_s=clips / seconds)


def measure_reads(store: str, clips: int, workers: int, pytorch_collate: bool = False, suffix: str = "") -> dict:
    """Random-order clips through the training loader (:class:`neurostorm.data.ClipLoader`, batches of one)
    with ``workers`` processes, cold (the store's pages evicted) and warm: the stored bytes as training gets
    them. With ``pytorch_collate``, a plain ``DataLoader`` instead, whose collate puts every batch in new
    shared memory: what the reused segments save."""
    import time

    from torch.utils.data import DataLoader, Subset

    from neurostorm.data.datasets import collate_clips
    from neurostorm.data.loading import ClipLoader

    dataset, order = _clip_order(store, clips)
    baseline = rss_mib()
    options = {"batch_size": 1, "num_workers": workers, "persistent_workers": True}  # warm: started, pages cached
    loader = DataLoader(Subset(dataset, order), collate_fn=collate_clips, **options) if pytorch_collate \
        else ClipLoader(Subset(dataset, order), **options)
    rates = {}
    for state in ("cold", "warm"):
        if state == "cold":
            _evict(store)
        start = time.perf_counter()
        for batch in loader:
            assert batch["x"].shape[-4:] == (CLIP_FRAMES, 96, 96, 96)  # as stored
        rates[state] = clips / (time.perf_counter() - start)
    name = f"data-loader-per-worker{'-pytorch-collate' if pytorch_collate else ''}{suffix}" if workers == 1 \
        else f"read-clips-{workers}workers{suffix}"
    return record(name, [clips, 1, 96, 96, 96, CLIP_FRAMES], clips / rates["warm"], baseline,
                  clips_per_s=rates["warm"], clips_per_s_cold=rates["cold"], clips_per_s_warm=rates["warm"])


def measure_sustained(store: str, rate: float, workers: int, batches: int, batch_size: int) -> dict:
    """A consumer that takes a batch every ``batch_size / rate`` seconds (a sleep standing in for the GPU's
    step) from ``workers`` loader processes with the training loader's settings, after a warm-up (the workers
    start and allocate the segments they reuse): clips/s achieved, the share of batches it waited for
    (stalled: waited more than a tenth of a step), and the peak memory of the process and its workers
    together (proportional set size: shared pages counted once)."""
    import threading
    import time

    import psutil
    from torch.utils.data import Subset

    from neurostorm.data.loading import SPARE_BATCHES, ClipLoader

    prefetch = 2  # the training loader's data.prefetch_batches
    warmup = 1 + workers * (prefetch + SPARE_BATCHES)  # the workers start and allocate the segments they reuse
    dataset, order = _clip_order(store, (warmup + batches) * batch_size)
    loader = ClipLoader(Subset(dataset, order), batch_size=batch_size, num_workers=workers,
                        prefetch_factor=prefetch if workers else None, persistent_workers=workers > 0)
    peak, done = [0.0], threading.Event()

    def sample_memory() -> None:
        me = psutil.Process()
        while not done.is_set():
            processes = [me, *me.children(recursive=True)]
            total = 0
            for process in processes:
                try:
                    total += process.memory_full_info().pss  # shared pages counted once
                except psutil.NoSuchProcess:
                    continue
            peak[0] = max(peak[0], total / 2**20)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    step = batch_size / rate
    iterator = iter(loader)
    for _ in range(warmup):  # not part of the steady state
        next(iterator)
        time.sleep(step)
    waits, start = [], time.perf_counter()
    for _ in range(batches):
        waited = time.perf_counter()
        next(iterator)
        waits.append(time.perf_counter() - waited)
        time.sleep(step)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    stalled = float(np.mean(np.asarray(waits) > 0.1 * step))
    return record(f"data-sustained-{int(rate)}", [batches, batch_size, 96, 96, 96, CLIP_FRAMES], seconds,
                  rss_mib(), clips_per_s=batches * batch_size / seconds, target_clips_per_s=rate,
                  workers=workers, stalled_share=stalled, mean_wait_s=float(np.mean(waits)),
                  peak_host_mib=peak[0])


RATES = (100, 250, 1000)  # clips/s a GPU consumes: base-model training (~100-250) to bf16 inference (~1,000)


def _share_of_ceiling(row: dict, ceiling: dict, meaning: str) -> dict:
    if "error" in row or "error" in ceiling:
        return row
    return {**row, "ratio": row["clips_per_s"] / ceiling["clips_per_s"], "ratio_means": meaning}


def _codec_rows(store: str, codecs: tuple[str, ...]) -> list[dict]:
    rows = [run_child("data", "measure_codec", store, name) for name in codecs]
    reference = next((row for row in rows if row["name"] == "data-codec-zstd-3" and "error" not in row), None)
    return [row if reference is None else _share_of_ceiling(row, reference, "decode clips/s / zstd level 3's")
            for row in rows]


def run(quick: bool, workdir: Path, encoder_clips_per_s: float | None) -> list[dict]:
    """Preprocessing against a plain reslice; candidate codecs; the codec's ceiling, the loader's clips/s per
    worker against it (zstd, the default, and lz4), the workers each GPU rate needs and whether a loader
    sustains it; the read rate against the encoder's."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = str(workdir / "sub-bench_task-rest_bold.nii.gz")
    write_long_run(Path(source), 200 if quick else 1200)
    reslice = run_child("data", "measure_reslice", source)
    results = [reslice]
    for storage, codec in (("int8", "zstd"), ("float16", "zstd"), ("int8", "lz4")):
        row = run_child("data", "measure_preprocess", source, str(workdir / f"store-{storage}-{codec}"), storage, codec)
        results.append({**row, "ratio": row["seconds"] / reslice["seconds"],
                        "ratio_means": "times the seconds of a plain nilearn reslice"})
    store, clips = str(workdir / "store-int8-zstd"), 32 if quick else 96
    results += _codec_rows(store, CANDIDATE_CODECS)
    ceiling = run_child("data", "measure_codec_ceiling", store)
    one_process = _share_of_ceiling(run_child("data", "measure_store_reads", store, clips), ceiling,
                                    "clips/s read in one process, no loader / the codec's clips/s")
    per_worker, pytorch_collate = (
        _share_of_ceiling(run_child("data", "measure_reads", store, clips, 1, plain), ceiling,
                          "warm clips/s of one loader worker / the codec's clips/s") for plain in (False, True))
    lz4_store = str(workdir / "store-int8-lz4")
    lz4_ceiling = run_child("data", "measure_codec_ceiling", lz4_store, "data-codec-ceiling-lz4")
    lz4_worker = _share_of_ceiling(run_child("data", "measure_reads", lz4_store, clips, 1, False, "-lz4"),
                                   lz4_ceiling, "warm clips/s of one loader worker / the lz4 codec's clips/s")
    reads = run_child("data", "measure_reads", store, clips, 2)
    if encoder_clips_per_s and "error" not in reads:
        reads = {**reads, "ratio": reads["clips_per_s_cold"] / encoder_clips_per_s,
                 "ratio_means": "cold clips/s read / base encoder training clips/s"}
    results += [ceiling, one_process, per_worker, pytorch_collate, lz4_ceiling, lz4_worker, reads]
    cores = os.cpu_count() or 1
    # the GPU rates, and one this machine can feed (80 % of what its cores but one read) to show a fed consumer
    within_reach = int(0.8 * per_worker["clips_per_s"] * max(1, cores - 1)) if "error" not in per_worker else 10
    for rate in (*RATES, within_reach):
        needed = math.ceil(rate / per_worker["clips_per_s"]) if "error" not in per_worker else cores
        workers = max(1, min(needed, cores - 1 if rate == within_reach else cores))
        row = run_child("data", "measure_sustained", store, rate, workers, 20 if quick else 60, 8)
        if "error" not in row:
            row = {**row, "workers_needed": needed, "ratio": row["clips_per_s"] / rate,
                   "ratio_means": "clips/s achieved / the consumer's rate (workers: needed, capped at the cores)"}
        results.append(row)
    return results
