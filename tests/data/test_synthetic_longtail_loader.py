import torch

from fastorals.data import (
    ImageDataset,
    TensorLoader,
    group_accuracy,
    load_digits,
    long_tailed_counts,
    long_tailed_indices,
    shot_groups,
    synthetic_images,
    synthetic_splits,
    train_test_split,
)
from fastorals.testing import assert_raises


def test_synthetic_deterministic_balanced_and_varied():
    a = synthetic_images(300, num_classes=10, size=32, seed=3)
    b = synthetic_images(300, num_classes=10, size=32, seed=3)
    c = synthetic_images(300, num_classes=10, size=32, seed=4)
    assert a.images.dtype == torch.uint8 and a.images.shape == (300, 3, 32, 32)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.class_counts().tolist() == [30] * 10
    # images are not constant and differ within a class (random pose, colour, clutter)
    same = a.images[a.labels == 0].float()
    assert same.std(0).mean() > 20
    assert len(a.classes) == 10 and a.classes[0] == "disk/solid"


def test_synthetic_other_sizes_and_many_classes():
    d = synthetic_images(250, num_classes=250, size=16, seed=0)
    assert d.images.shape == (250, 3, 16, 16) and d.labels.max() == 249 and d.num_classes == 250
    s = synthetic_splits(40, 20, num_classes=4)
    assert len(s.train) == 40 and len(s.test) == 20
    assert not torch.equal(s.train.images[:20], s.test.images)


def test_synthetic_bad_args():
    with assert_raises(ValueError, "num_classes"):
        synthetic_images(10, num_classes=1)
    with assert_raises(ValueError, "size"):
        synthetic_images(10, size=4)
    with assert_raises(ValueError, "n"):
        synthetic_images(-1)


def test_long_tail_counts_cifar100_ir100():
    counts = long_tailed_counts(100, 500, 100)
    assert sum(counts) == 10847 and counts[0] == 500 and counts[-1] == 5
    labels = torch.arange(100).repeat_interleave(500)
    labels = labels[torch.randperm(labels.numel())]
    idx = long_tailed_indices(labels, 100, seed=0)
    assert idx.numel() == 10847
    assert torch.bincount(labels[idx], minlength=100).tolist() == counts
    assert idx.unique().numel() == idx.numel()
    assert torch.equal(idx, long_tailed_indices(labels, 100, seed=0))
    assert not torch.equal(idx, long_tailed_indices(labels, 100, seed=1))
    # CIFAR-10-LT IR 100 from 5000 per class
    assert sum(long_tailed_counts(10, 5000, 100)) == 12406


def test_long_tail_errors_and_groups():
    labels = torch.arange(3).repeat_interleave(10)
    with assert_raises(ValueError, "imbalance_ratio"):
        long_tailed_indices(labels, 0.5)
    with assert_raises(ValueError, "n_max"):
        long_tailed_indices(labels, 2, n_max=11)
    with assert_raises(ValueError, "labels"):
        long_tailed_indices(labels, 2, num_classes=2)
    g = shot_groups(torch.tensor([500, 101, 100, 20, 19, 5]))
    assert g["many"].tolist() == [0, 1] and g["medium"].tolist() == [2, 3] and g["few"].tolist() == [4, 5]
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    lab = torch.tensor([0, 0, 1, 1, 2, 2])
    acc = group_accuracy(pred, lab, {"many": torch.tensor([0]), "few": torch.tensor([1, 2])}, 3)
    assert acc["many"] == 1.0 and acc["few"] == 0.75 and abs(acc["all"] - 2.5 / 3) < 1e-9


def test_digits():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.uint8
    assert d.images.max() == 255 and d.labels.unique().tolist() == list(range(10))
    s = train_test_split(d, 0.25, seed=0)
    assert len(s.train) + len(s.test) == 1797
    assert abs(len(s.test) - 0.25 * 1797) < 10


def test_loader_epochs_cover_everything_and_resume_order():
    x = torch.arange(103).view(-1, 1).float()
    y = torch.arange(103)
    ld = TensorLoader(x, y, batch_size=10, seed=5)
    assert len(ld) == 11
    ld.set_epoch(2)
    seen = torch.cat([b for _, b in ld])
    assert sorted(seen.tolist()) == list(range(103))
    order_a = seen.clone()
    ld2 = TensorLoader(x, y, batch_size=10, seed=5)
    ld2.load_state_dict(ld.state_dict())
    assert torch.equal(torch.cat([b for _, b in ld2]), order_a)
    ld.set_epoch(3)
    assert not torch.equal(torch.cat([b for _, b in ld]), order_a)
    dl = TensorLoader(x, y, batch_size=10, drop_last=True, shuffle=False)
    assert len(dl) == 10 and sum(b.numel() for _, b in dl) == 100


def test_loader_ddp_shards_are_disjoint_and_cover():
    x = torch.arange(50).float()
    y = torch.arange(50)
    shards = [torch.cat([b for _, b in TensorLoader(x, y, 7, seed=1, rank=r, world_size=4)]) for r in range(4)]
    assert all(s.numel() == 13 for s in shards)  # ceil(50 / 4)
    allv = torch.cat(shards)
    assert set(allv.tolist()) == set(range(50))
    with assert_raises(ValueError, "rank"):
        TensorLoader(x, y, 7, rank=4, world_size=4)


def test_loader_and_dataset_errors():
    with assert_raises(ValueError, "labels"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(2))
    with assert_raises(ValueError, "batch_size"):
        TensorLoader(torch.zeros(3, 2), torch.zeros(3), batch_size=0)
    with assert_raises(ValueError, "images"):
        ImageDataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    ds = ImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 1, 2]))
    x, y_ = ds
    assert x.shape[0] == 4 and y_.shape[0] == 4 and ds.num_classes == 3
    ld = TensorLoader(ds, batch_size=2, transform=lambda a, b: a.float() + 1)
    assert next(iter(ld))[0].dtype == torch.float32
