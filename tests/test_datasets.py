"""Clip / ROI / FC datasets and subject-level splits."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neurostorm.data import ClipDataset, FCDataset, ROIDataset, Store, load_or_make_split, make_split
from neurostorm.data.datasets import collate_clips, decoded
from neurostorm.data.preprocess import PreprocessConfig, preprocess
from neurostorm.data.roi import extract_rois
from neurostorm.errors import InputError
from neurostorm.train.modules import ClipModule


def test_clip_dataset(store):
    dataset = ClipDataset(store, sequence_length=20, label="sex")
    runs = Store(store).manifest
    assert len(dataset) == len(runs) * (58 // 20)  # non-overlapping clips of 20 from 58 frames
    item = dataset[1]
    assert item["x"].shape == (1, 20, 96, 96, 96) and item["x"].dtype == torch.int8  # the stored bytes, in order
    assert item["scale"].shape == (20,) and item["scale"].dtype == torch.float32
    assert item["start"] == 20 and item["y"].dtype == torch.long and dataset.classes == ["F", "M"]
    overlapping = ClipDataset(store, sequence_length=20, stride=10)
    assert len(overlapping) == len(runs) * 4
    age = ClipDataset(store, label="age", subjects=["01", "02"])
    assert len(age.runs) == 2 and age[0]["y"].dtype == torch.float32 and age.classes is None
    torch.manual_seed(0)
    cropped = ClipDataset(store, sequence_length=20, random_crop=True)
    starts = {cropped[0]["start"] for _ in range(20)}
    assert len(starts) > 1 and max(starts) <= 58 - 20


def test_clip_matches_store_frames_in_time_order(store):
    dataset = ClipDataset(store, sequence_length=20)
    item = decoded(dataset[0])
    frames = Store(store).read_clip(item["run_id"], 0, 20)
    assert torch.equal(item["x"][0, ..., 3], torch.from_numpy(frames[3]))  # time is the last axis


def test_splits_are_disjoint_stratified_seeded_and_reused(tmp_path):
    subjects = pd.DataFrame({"subject": [f"{i:02d}" for i in range(40)], "sex": ["F", "M"] * 20})
    split = make_split(subjects, (0.6, 0.2, 0.2), seed=1, stratify="sex")
    sets = [set(split[name]) for name in ("train", "val", "test")]
    assert sum(map(len, sets)) == 40 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in sets] == [24, 8, 8]
    for name in ("val", "test"):
        sexes = subjects.set_index("subject").loc[split[name], "sex"]
        assert (sexes == "F").sum() == (sexes == "M").sum()
    assert make_split(subjects, (0.6, 0.2, 0.2), seed=1, stratify="sex") == split
    assert make_split(subjects, (0.6, 0.2, 0.2), seed=2, stratify="sex") != split
    assert make_split(subjects.head(3), (1.0, 0.0, 0.0))["test"] != make_split(subjects.head(3), (1.0, 0.0, 0.0))["val"]

    path = tmp_path / "split.json"
    first = load_or_make_split(path, subjects, seed=5)
    assert load_or_make_split(path, subjects, seed=99) == first  # reused, not remade
    saved = json.loads(path.read_text())
    saved["val"].append(saved["train"][0])
    path.write_text(json.dumps(saved))
    with pytest.raises(InputError, match="more than one split"):
        load_or_make_split(path, subjects)


def test_roi_and_fc_datasets(store, tmp_path):
    extract_rois(str(store), "dosenbach160", tmp_path / "roi", progress=False)
    series = ROIDataset(tmp_path / "roi", label="sex", sequence_length=20)
    assert len(series) == 6 * 2 and series[0]["x"].shape == (20, 160)
    fc = FCDataset(tmp_path / "roi", subjects=["01", "03"], label="age")
    assert len(fc) == 2 and fc[0]["x"].shape == (160, 160) and fc[0]["y"].dtype == torch.float32


@pytest.fixture(scope="module")
def stores_by_storage(cohort, tmp_path_factory):
    """The cohort's first three runs stored as int8 and as float16 (zstd), and as int8 with lz4, on the 4 mm
    grid."""
    runs = sorted(cohort.glob("sub-*/func/*_bold.nii.gz"))[:3]
    out = tmp_path_factory.mktemp("storages")
    kinds = {"int8": ("int8", "zstd"), "float16": ("float16", "zstd"), "int8-lz4": ("int8", "lz4")}
    for name, (storage, codec) in kinds.items():
        config = PreprocessConfig(grid="mni152-fsl-4mm-48", storage=storage, codec=codec)
        assert not preprocess(runs, out / name, config, progress=False).failures
    return {name: Store(out / name) for name in kinds}


@pytest.mark.parametrize("storage, dtype", [("int8", torch.int8), ("float16", torch.float16),
                                            ("int8-lz4", torch.int8)])
def test_loaders_move_the_stored_bytes_and_decode_to_the_same_numbers(stores_by_storage, storage, dtype):
    """A batch holds the stored values (a quarter of float32's bytes for int8) and per-frame scales; decoding
    it where the model runs gives exactly the float32 clip the store reads on the CPU."""
    store = stores_by_storage[storage]
    dataset = ClipDataset(store, sequence_length=8)
    batch = collate_clips([dataset[i] for i in range(3)])
    assert batch["x"].dtype == dtype and batch["scale"].shape == (3, 8)
    if storage == "float16":
        assert torch.equal(batch["scale"], torch.ones(3, 8))
    module = ClipModule()  # Lightning calls this hook with the batch on the module's device
    model_input = module.on_after_batch_transfer(batch, 0)
    assert "scale" not in model_input and model_input["x"].dtype == torch.float32
    for i in range(3):
        reference = store.read_clip(batch["run_id"][i], int(batch["start"][i]), 8)  # (T, X, Y, Z) float32
        assert torch.equal(model_input["x"][i, 0], torch.from_numpy(reference).permute(1, 2, 3, 0))


def test_a_batch_mixing_storages_is_decoded_before_it_is_stacked(stores_by_storage):
    items = [ClipDataset(stores_by_storage[s], sequence_length=8)[0] for s in ("int8", "float16")]
    batch = collate_clips(items)
    assert batch["x"].dtype == torch.float32 and torch.equal(batch["scale"], torch.ones(2, 8))
    expected = [decoded(item)["x"] for item in items]
    assert torch.equal(decoded(batch)["x"], torch.stack(expected))


def _segment(x: torch.Tensor) -> int:
    """The shared-memory segment a batch received from a loader worker lies in (its inode)."""
    import os

    fd, _ = x.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


@pytest.mark.parametrize("storage", ["int8", "float16"])
def test_clip_loader_workers_reuse_released_batches_and_never_a_kept_one(stores_by_storage, storage):
    """Two workers read batches into shared segments they reuse once this process has dropped them: every
    batch equals the clips read here, far fewer segments than batches serve an epoch dropped as it goes, and
    an epoch kept whole stays intact while the workers go on with another."""
    from neurostorm.data.loading import ClipLoader

    dataset = ClipDataset(stores_by_storage[storage], sequence_length=4, stride=2)
    expected = [collate_clips([dataset[i] for i in range(k, min(k + 3, len(dataset)))])
                for k in range(0, len(dataset), 3)]
    loader = ClipLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True)

    def check(batch: dict, k: int) -> None:
        assert set(batch) == set(expected[k]) and batch["x"].dtype == expected[k]["x"].dtype
        for key in ("x", "scale", "start"):
            assert torch.equal(batch[key], expected[k][key]), (k, key)

    segments = []
    for k, batch in enumerate(loader):
        check(batch, k)
        segments.append(_segment(batch["x"]))
    assert len(set(segments)) <= 2 * (1 + loader.collate_fn.slots) < len(segments)  # each: its first batch, kept ones
    kept = list(loader)
    for k, batch in enumerate(loader):  # the workers' kept segments are all held: new ones, kept ones untouched
        check(batch, k)
    for k, batch in enumerate(kept):
        check(batch, k)


def test_the_clips_of_several_stores_load_as_each_store_reads_them(stores_by_storage):
    """Pretraining's stores as one dataset, in a shuffled order, through two workers: each batch holds the
    clips each store reads, zstd and lz4 runs in one segment, float16 runs beside int8 ones made float32."""
    from neurostorm.data.datasets import ClipsOfStores
    from neurostorm.data.loading import ClipLoader

    stores = ClipsOfStores([ClipDataset(stores_by_storage[name], sequence_length=4, stride=4)
                            for name in ("int8", "int8-lz4", "float16")])
    order = torch.randperm(len(stores), generator=torch.Generator().manual_seed(0)).tolist()
    for k, batch in enumerate(ClipLoader(stores, batch_size=4, sampler=order, num_workers=2)):
        expected = collate_clips([stores[i] for i in order[4 * k:4 * k + 4]])
        assert batch["run_id"] == expected["run_id"] and batch["x"].dtype == expected["x"].dtype
        for key in ("x", "scale", "start"):
            assert torch.equal(batch[key], expected[key]), (k, key)


def test_a_chunk_that_fails_to_decompress_names_the_run_and_frame(stores_by_storage, tmp_path):
    """A damaged shard: the read names the run's folder and the first frame it cannot decode, the same at
    any number of loader workers (the worker's error reaches the caller as it was raised)."""
    import shutil

    from neurostorm.data.loading import ClipLoader

    copy = tmp_path / "store"
    shutil.copytree(stores_by_storage["int8"].location, copy)
    run_id = Store(copy).manifest["run_id"].iloc[0]
    shard = next(p for p in sorted((copy / "runs" / f"{run_id}.zarr" / "bold").rglob("*")) if p.is_file())
    data = bytearray(shard.read_bytes())
    data[len(data) // 3:len(data) // 3 + 4096] = bytes(4096)  # zeros over compressed frames
    shard.write_bytes(bytes(data))
    dataset = ClipDataset(copy, sequence_length=8)
    for workers in (0, 2):
        with pytest.raises(InputError, match=rf"{run_id}\.zarr: frame \d+ cannot be read") as err:
            list(ClipLoader(dataset, batch_size=2, num_workers=workers))
        assert err.value.path.endswith(f"runs/{run_id}.zarr")


def test_frames_read_by_shard_equal_zarr_reads(stores_by_storage, tmp_path):
    """The ranged shard reads give zarr's values for every window (within and across shards, the short last
    shard), for both storages, for a frame never written (all zeros, left out of its shard) and for a layout
    they do not parse (read through zarr), into a new array or into one given; zstd and lz4 runs hold the
    same values and are both read by the fast path."""
    import zarr

    from neurostorm.data.runs import FrameReader, RunWriter, open_run

    for store in stores_by_storage.values():
        run_id = store.manifest["run_id"].iloc[0]
        bold = store.run(run_id)["bold"]
        reader = FrameReader(store.location, run_id, store.run(run_id))
        assert reader.shard_frames == 20
        for start, stop in ((0, 8), (15, 24), (20, 24), (3, 23), (0, 24)):
            assert np.array_equal(reader.read(start, stop), bold[start:stop])
    zstd, lz4 = stores_by_storage["int8"], stores_by_storage["int8-lz4"]
    assert zstd.manifest["data_sha256"].tolist() == lz4.manifest["data_sha256"].tolist()  # the same values
    run_id = zstd.manifest["run_id"].iloc[0]
    for store, decoder in ((zstd, "Zstd"), (lz4, "Blosc")):
        assert type(FrameReader(store.location, run_id, store.run(run_id)).decoder).__name__ == decoder
    frames = np.random.default_rng(0).integers(-100, 100, (25, 4, 5, 6)).astype(np.int8)
    frames[21] = 0  # zarr leaves an all-fill chunk out of the shard
    writer = RunWriter(str(tmp_path), "sparse", 25, (4, 5, 6), "int8", np.ones((4, 5, 6), bool))
    for frame in frames:
        writer.append(frame, 0.5)
    writer.commit({})
    reader = FrameReader(str(tmp_path), "sparse", open_run(str(tmp_path), "sparse"))
    assert np.array_equal(reader.read(18, 25), frames[18:25]) and np.array_equal(reader.read(0, 25), frames)
    out = np.full((7, 4, 5, 6), 7, np.int8)
    assert reader.read(18, 25, out=out) is out and np.array_equal(out, frames[18:25])
    other = zarr.open_group(tmp_path / "runs" / "plain.zarr", mode="w")
    other.create_array("bold", data=frames, chunks=(5, 4, 5, 6))  # no shards: read through zarr
    reader = FrameReader(str(tmp_path), "plain", open_run(str(tmp_path), "plain"))
    assert reader.shard_frames is None and np.array_equal(reader.read(3, 17), frames[3:17])
    out = np.full((14, 4, 5, 6), 7, np.int8)  # a batch's row, as a loader worker reads into its segment
    assert reader.read(3, 17, out=out) is out and np.array_equal(out, frames[3:17])


def test_a_loader_worker_killed_mid_epoch_is_reported_in_one_line(store_4mm, tmp_path):
    """A loader process killed (as the kernel does when memory runs out) ends the job with one line that
    says so, well before any timeout, rather than a hang or a traceback."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    command = [sys.executable, "-m", "neurostorm.cli", "pretrain", "--config", "tiny", "--out", str(tmp_path / "run"),
               f"data.stores=[{store_4mm}]", "data.num_workers=2", "data.sequence_length=8", "data.batch_size=1",
               "optim.epochs=500", "trainer.progress=false"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    workers: list = []
    while time.monotonic() < deadline and process.poll() is None and not workers:
        workers = psutil.Process(process.pid).children()
        time.sleep(0.2)
    assert workers, "no loader worker started"
    time.sleep(1.0)
    workers[0].send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert process.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("neurostorm pretrain: DataLoader worker") and "data.num_workers" in lines[0]
