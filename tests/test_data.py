"""Loaders (CPU): both backends, rank sharding, equal epoch lengths, exact evaluation, resume, bad input.

The dataset gives every record a unique label (its index), so labels identify records.
"""
import logging
import os

import numpy as np
import pytest
import torch
import torchvision.io as tvio

from toolkit import recordio
from toolkit.data import build_loader, dataset_info
from toolkit.data.sampler import RankBatches
from toolkit.errors import UserError

N_TRAIN, N_VAL = 60, 23


def write_split(path_prefixes, labels, rng, bad=()):
    per = -(-len(labels) // len(path_prefixes))
    for s, prefix in enumerate(path_prefixes):
        with recordio.IndexedRecordWriter(prefix + ".idx", prefix + ".rec") as w:
            for i in labels[s * per:(s + 1) * per]:
                img = torch.from_numpy(rng.integers(0, 255, (3, 40 + i % 7, 36), dtype=np.uint8))
                data = b"\xff\xd8 broken" if i in bad else tvio.encode_jpeg(img).numpy().tobytes()
                w.write_idx(i, recordio.pack((0, float(i), i, 0), data))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    rng = np.random.default_rng(0)
    write_split([str(d / "set_train-00000"), str(d / "set_train-00001")], list(range(N_TRAIN)), rng)
    write_split([str(d / "set_val")], list(range(N_VAL)), rng)
    (d / "classes.tsv").write_text("".join(f"{i}\tc{i}\n" for i in range(N_TRAIN)))
    return str(d)


def epoch_labels(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    out = []
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        out.append(y.tolist())
    return out


def make(data_dir, backend, **kw):
    args = dict(split="train", train=True, batch_size=8, image_size=32, workers=1, backend=backend)
    args.update(kw)
    return build_loader(data_dir, **args)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_ranks_cover_disjointly_with_equal_epoch_lengths(data_dir, backend):
    for world in (2, 3):
        seen, lengths = [], set()
        for rank in range(world):
            loader = make(data_dir, backend, rank=rank, world_size=world)
            for epoch in (0, 1):
                batches = epoch_labels(loader, epoch)
                lengths.add(len(batches))
                assert len(batches) == len(loader) and all(len(b) == 8 for b in batches)
                if epoch == 0:
                    seen += [v for b in batches for v in b]
        assert len(lengths) == 1, lengths
        assert len(seen) == len(set(seen))  # no record on two ranks


def test_both_backends_yield_the_same_label_multiset(data_dir):
    torch_val = epoch_labels(make(data_dir, "torch", split="val", train=False))
    dali_val = epoch_labels(make(data_dir, "dali", split="val", train=False))
    assert sorted(sum(torch_val, [])) == sorted(sum(dali_val, [])) == list(range(N_VAL))
    t = make(data_dir, "torch", batch_size=6)  # 60 records: nothing dropped in train mode
    d = make(data_dir, "dali", batch_size=6, world_size=2, rank=0)
    d1 = make(data_dir, "dali", batch_size=6, world_size=2, rank=1)
    both = sum(epoch_labels(d), []) + sum(epoch_labels(d1), [])
    assert sorted(sum(epoch_labels(t), [])) == sorted(both) == list(range(N_TRAIN))


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_evaluation_counts_every_image_once_for_any_world(data_dir, backend):
    for world in (1, 2, 3):
        labels, samples = [], 0
        for rank in range(world):
            loader = make(data_dir, backend, split="val", train=False, rank=rank, world_size=world)
            labels += sum(epoch_labels(loader), [])
            samples += loader.num_samples
        assert sorted(labels) == list(range(N_VAL)) and samples == N_VAL


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_resume_at_batch_k_equals_the_tail(data_dir, backend):
    def batches(loader, start):
        loader.set_epoch(3, start)
        return [(x.clone(), y.clone()) for x, y in loader]
    full = batches(make(data_dir, backend, world_size=2, rank=1), 0)
    tail = batches(make(data_dir, backend, world_size=2, rank=1, workers=2), 2)
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # same images and augmentation draws


def test_torch_backend_order_differs_per_epoch_and_is_seeded(data_dir):
    loader = make(data_dir, "torch")
    assert epoch_labels(loader, 0) != epoch_labels(loader, 1)
    assert epoch_labels(make(data_dir, "torch", seed=5), 0) != epoch_labels(loader, 0)
    assert epoch_labels(make(data_dir, "torch"), 0) == epoch_labels(loader, 0)


def test_ten_crop_channels_last_and_half(data_dir):
    loader = make(data_dir, "torch", split="val", train=False, ten_crop=True, batch_size=5)
    loader.set_epoch(0)
    x, y = next(iter(loader))
    assert x.shape == (5, 10, 3, 32, 32) and y.shape == (5,)
    # the flipped centre crop (9) mirrors the centre crop (4), up to a pixel of centring
    assert torch.allclose(x[:, 9].mean((2, 3)), x[:, 4].mean((2, 3)), atol=0.1)
    assert not torch.equal(x[:, 0], x[:, 3])
    loader = make(data_dir, "torch", channels_last=True, dtype=torch.bfloat16)
    loader.set_epoch(0)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_corrupt_record_is_logged_once_and_replaced_in_training(tmp_path, caplog):
    write_split([str(tmp_path / "train")], list(range(16)), np.random.default_rng(1), bad={5})
    loader = build_loader(str(tmp_path), batch_size=16, image_size=32, workers=0, backend="torch")
    with caplog.at_level(logging.WARNING):
        for epoch in (0, 1):
            labels = sum(epoch_labels(loader, epoch), [])
            assert 5 not in labels and labels.count(6) == 2 and len(labels) == 16
    warnings = [r.getMessage() for r in caplog.records if "corrupt record" in r.getMessage()]
    assert len(warnings) == 1 and "train.rec key 5 offset" in warnings[0]


def test_bad_input_is_one_clear_error(data_dir, tmp_path):
    with pytest.raises(UserError, match="no .rec files for split 'test'.*set_train, set_val"):
        build_loader(data_dir, split="test")
    with pytest.raises(UserError, match="larger than"):
        build_loader(data_dir, batch_size=40, world_size=2, backend="torch")
    with pytest.raises(UserError, match="larger than"):
        build_loader(data_dir, batch_size=40, world_size=2, backend="dali")
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(UserError, match="train.idx: index file missing"):
        build_loader(str(tmp_path))
    (tmp_path / "train.idx").write_text("")
    with pytest.raises(UserError, match="has no records"):
        build_loader(str(tmp_path))
    with pytest.raises(UserError, match="dataset folder not found"):
        build_loader(str(tmp_path / "nope"))
    info = dataset_info(data_dir)
    assert info.num_classes == N_TRAIN and info.mean[0] == pytest.approx(123.675)


def test_rank_batches_is_a_pure_function():
    a = RankBatches(100, 7, 1, 3, True, seed=3)
    b = RankBatches(100, 7, 1, 3, True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2, 2)
    assert list(a)[2:] == list(b) and len(a) == 100 // 21


def test_loader_memory_stays_flat_as_records_grow(tmp_path):
    """100k records cost arrays of a few bytes each, not Python objects (ImageNet: 1.28M per process)."""
    import tracemalloc
    jpg = tvio.encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy().tobytes()
    usage = {}
    for n in (1000, 100_000):
        d = tmp_path / str(n)
        d.mkdir()
        with recordio.IndexedRecordWriter(str(d / "m_train.idx"), str(d / "m_train.rec")) as w:
            for i in range(n):
                w.write_idx(i, recordio.pack((0, float(i % 10), i, 0), jpg))
        tracemalloc.start()
        loader = build_loader(str(d), "train", train=True, batch_size=16, image_size=8, workers=0, backend="torch")
        loader.set_epoch(0)
        for _, _batch in zip(range(3), loader):
            pass
        usage[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del loader
    per_record = (usage[100_000] - usage[1000]) / 99_000
    assert per_record < 64, f"{per_record:.0f} bytes per record"


def test_region_decode_equals_full_decode_and_crop():
    from toolkit.data import torch_backend as tb
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (3, 61, 83), dtype=np.uint8))
    grey = img[:1]
    for src in (img, grey):
        payload = tvio.encode_jpeg(src, quality=90).numpy().tobytes()
        full = tb.decode(payload)
        for box in [(0, 0, 61, 83), (7, 11, 40, 29), (30, 50, 31, 33)]:
            crop = tb.decode_crop(payload, lambda h, w: box)
            t, l, h, w = box
            assert crop.shape == (3, h, w) and torch.equal(crop, full[:, t:t + h, l:l + w])
    assert tb._roi_decoder() is not None  # nvImageCodec comes with DALI: the region path is the one tested


@pytest.mark.parametrize("size", [48, 20])  # crops mostly upscaled; mostly shrunk 2x and more
def test_train_transform_is_crop_flip_resize_of_the_decoded_image(size):
    """The fast path (region decode, OpenCV resize, HWC -> CHW in place) against torchvision's
    RandomResizedCrop arithmetic on the full decode (bilinear, antialiased): same box, same flip,
    pixels within a few grey levels (OpenCV shrinks by area averaging, a slightly different filter)."""
    import torch.nn.functional as F
    from toolkit.data import torch_backend as tb
    rng = np.random.default_rng(3)
    low = torch.from_numpy(rng.integers(0, 255, (3, 6, 8), dtype=np.uint8)).float()[None]
    img = F.interpolate(low, size=(60, 80), mode="bilinear").round().to(torch.uint8)[0]  # smooth
    payload = tvio.encode_jpeg(img, quality=95).numpy().tobytes()
    full, t = tb.decode(payload), tb.TrainTransform(size)
    flips = 0
    for seed in range(12):
        out = torch.full((3, size, size), 7, dtype=torch.uint8)
        t(payload, seed, out)
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = t.crop_box(60, 80, g)
        crop = full[:, top:top + h, left:left + w]
        if torch.rand(1, generator=g).item() < 0.5:
            crop, flips = crop.flip(-1), flips + 1
        ref = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
        diff = (out.float() - ref).abs()
        assert diff.mean() < 1.5 and diff.max() <= 8, (seed, diff.mean(), diff.max())
        assert (out.float() - ref.flip(-1)).abs().mean() > 5  # a wrong flip would be seen
        assert torch.equal(t(payload, seed), out)  # without a slot: the same pixels
    assert 0 < flips < 12


def test_colour_jitter_and_pca_lighting_are_seeded_per_sample(data_dir):
    """Both draw per sample from (seed, epoch, position): two loaders agree batch for batch, also from
    a resume point with a different worker count, and the draws change the pixels."""
    def batches(start=0, **kw):
        loader = make(data_dir, "torch", color_jitter=0.4, pca_lighting=0.1, **kw)
        loader.set_epoch(1, start)
        return [x for x, _ in loader]
    full, tail = batches(workers=2), batches(start=3, workers=0)
    assert len(full) == len(tail) + 3 and all(torch.equal(a, b) for a, b in zip(full[3:], tail))
    plain = make(data_dir, "torch", workers=0)
    plain.set_epoch(1)
    x0 = next(iter(plain))[0]
    assert not torch.equal(x0, full[0]) and (x0 - full[0]).abs().mean() > 0.05


def test_cpu_batches_are_reused_only_when_nothing_refers_to_them(data_dir):
    """The CPU output pool: dropped batches' memory comes back; a batch still held (by a variable, a
    view, or an autograd graph that saved it) is never overwritten."""
    def epoch(**kw):
        loader = make(data_dir, "torch", workers=0, **kw)
        loader.set_epoch(0)
        return loader
    held = [x for x, _ in epoch()]  # every batch held: all distinct memory, values intact
    assert len({x.data_ptr() for x in held}) == len(held)
    ptrs = [x.data_ptr() for x, _ in epoch()]  # each dropped before the next: memory reused
    assert len(set(ptrs)) <= 2 < len(ptrs)
    views = [x[:, :1] for x, _ in epoch()]  # only a view kept
    assert all(torch.equal(v, x[:, :1]) for v, x in zip(views, held))
    conv = torch.nn.Conv2d(3, 4, 3)
    it = iter(epoch())
    out = conv(next(it)[0]).square().sum()  # the graph alone holds batch 0
    for _ in range(3):
        next(it)
    out.backward()
    ref = torch.nn.Conv2d(3, 4, 3)
    ref.load_state_dict(conv.state_dict())
    ref(held[0].clone()).square().sum().backward()
    assert torch.equal(conv.weight.grad, ref.weight.grad)


def test_cpu_normalisation_equals_the_device_formula():
    """The OpenCV pass (CPU) and torch's ops (the GPU path, run here on the CPU) agree."""
    from toolkit.data import torch_backend as tb
    images = torch.randint(0, 256, (5, 3, 9, 11), dtype=torch.uint8)
    mean = torch.tensor([120.0, 110.0, 100.0]).view(1, 3, 1, 1)
    inv_std = 1 / torch.tensor([60.0, 55.0, 50.0]).view(1, 3, 1, 1)
    cpu = tb.normalize(images, mean, inv_std, torch.device("cpu"), torch.float32, False)
    device_path = tb.normalize(images.transpose(2, 3).contiguous().transpose(2, 3), mean, inv_std,
                               torch.device("cpu"), torch.float32, False)  # non-contiguous: torch ops
    expected = (images.double() - mean.double()) * inv_std.double()
    assert torch.allclose(cpu.double(), expected, atol=1e-5) and torch.allclose(cpu, device_path, atol=1e-5)


def test_worker_batches_come_from_the_ring_and_an_abandoned_epoch_frees_its_slots(data_dir):
    loader = make(data_dir, "torch", workers=2)
    ring = loader.ring
    assert ring is not None and ring.images.is_shared()
    loader.set_epoch(0)
    ring.new_generation()
    raw = [images for images, _ in loader.loader]  # the DataLoader itself: slots, never released
    assert len(raw) == len(loader) and all(isinstance(s, int) for s in raw) and len(set(raw)) == len(raw)
    it = iter(loader)  # a new epoch abandoned after two batches, its prefetched batches in flight
    next(it), next(it)
    del it
    reference = make(data_dir, "torch", workers=0)
    for epoch in (1, 2):  # the slots come free again: the epochs' batches are the right ones
        reference.set_epoch(epoch)
        loader.set_epoch(epoch)
        for (x, y), (rx, ry) in zip(loader, reference, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    # epoch 2 followed a complete epoch: it released every slot it took (in epoch 1, a task of the
    # abandoned epoch that a worker ran after the new generation began holds its slot until epoch 2)
    assert not (ring.state[:-1] == ring.state[-1]).any()
