"""Inputs a new user passes to the shared pieces: empty loaders, corrupt labels, damaged CIFAR
directories, long-tailed subsets past the data, interrupted writes, smoke runs beside real ones."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from fastorals import data, repro, training
from fastorals._io import atomic_write
from fastorals.data import CifarFormatError
from fastorals.testing import assert_raises


def test_fit_refuses_a_loader_without_batches_and_evaluate_reports_nan():
    ds = data.ImageDataset(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10) % 2)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    with assert_raises(ValueError, "train", "no batches"):
        training.fit(m, data.TensorLoader(ds, batch_size=64, drop_last=True), 2, progress=False)
    empty = data.TensorLoader(ds.subset(torch.zeros(0, dtype=torch.long)), batch_size=4)
    ev = training.evaluate(m, empty)
    assert ev["n"] == 0 and ev["acc"] != ev["acc"]  # NaN, not an accuracy of 0


def test_image_dataset_labels_are_checked():
    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    with assert_raises(ValueError, "labels", "4194304"):  # would build 4,194,305 class names (2**40 killed the process)
        data.ImageDataset(x[:1], torch.tensor([2 ** 22]))
    with assert_raises(ValueError, "labels", ">= 0"):
        data.ImageDataset(x, torch.tensor([0, -1]))
    with assert_raises(TypeError, "labels"):
        data.ImageDataset(x, torch.tensor([0.0, 1.7]))
    with assert_raises(ValueError, "labels", "[0, 2)"):
        data.ImageDataset(x, torch.tensor([0, 5]), classes=["a", "b"])


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar10(root, labels=None, sizes=(4, 4)):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, side in (("data_batch_1", sizes[0]), ("test_batch", sizes[1])):
        n = 3
        lab = list(labels) if labels is not None else [0, 1, 2]
        _write(d / name, {b"data": torch.zeros(n, 3 * side * side, dtype=torch.uint8).numpy(), b"labels": lab})
    return d


def test_damaged_cifar_directories_raise_cifar_format_errors(tmp_path):
    data.load_cifar10(_cifar10(tmp_path / "ok"))
    with assert_raises(CifarFormatError, "labels", "[0, 10)"):
        data.load_cifar10(_cifar10(tmp_path / "range", labels=[0, 12, 1]))
    with assert_raises(CifarFormatError, "integer"):
        data.load_cifar10(_cifar10(tmp_path / "floats", labels=[0.0, 1.7, 1.0]))
    with assert_raises(CifarFormatError, "different sizes"):
        data.load_cifar10(_cifar10(tmp_path / "sizes", sizes=(4, 8)))
    d = _cifar10(tmp_path / "dir")
    os.remove(d / "data_batch_1")
    os.mkdir(d / "data_batch_1")
    with assert_raises(CifarFormatError, "data_batch_1"):
        data.load_cifar10(d)
    with assert_raises(ValueError, "labels", "3 integer labels"):
        data.write_cifar_batch(tmp_path / "w", torch.zeros(3, 3, 2, 2, dtype=torch.uint8), torch.tensor([1]))


def test_long_tailed_indices_refuses_what_it_cannot_build():
    y = torch.arange(100) % 10
    with assert_raises(ValueError, "n_max", ">= 0"):
        data.long_tailed_indices(y, 10.0, n_max=-5)
    with assert_raises(ValueError, "classes [10, 11]", "no samples"):
        data.long_tailed_indices(y, 10.0, num_classes=12)
    with assert_raises(ValueError, "imbalance_ratio"):
        data.long_tailed_indices(y, float("nan"))
    with assert_raises(ValueError, "labels", "empty"):
        data.long_tailed_indices(torch.zeros(0, dtype=torch.long), 10.0)
    assert data.long_tailed_indices(y, 10.0).numel() == 36


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    p = tmp_path / "rows.json"
    atomic_write(p, lambda f: f.write("old"), text=True)
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(p).st_mode & 0o777) == 0o666 & ~mask  # as open(path, "w") would give

    def broken(f):
        f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, broken, text=True)
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["rows.json"]  # no temporary left


def test_smoke_runs_write_apart_from_real_runs(tmp_path):
    @repro.register("_demo_apart", "a test reproduction")
    def _run(mode, out_dir, seed):
        with open(os.path.join(out_dir, "model.pt"), "w") as f:
            f.write(mode)
        return {"mode": mode}

    repro.run("_demo_apart", "quick", str(tmp_path))
    repro.run("_demo_apart", "smoke", str(tmp_path))
    assert (tmp_path / "model.pt").read_text() == "quick" and (tmp_path / "smoke" / "model.pt").read_text() == "smoke"


def test_resume_refuses_another_optimizer_batch_size_or_a_foreign_file(tmp_path):
    ds = data.ImageDataset(torch.zeros(16, 3, 4, 4, dtype=torch.uint8), torch.arange(16) % 2)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))

    ck = str(tmp_path / "ck.pt")
    training.fit(model(), data.TensorLoader(ds, batch_size=4), 1, checkpoint=ck, progress=False)
    with assert_raises(ValueError, "checkpoint", "another optimizer"):
        training.fit(model(), data.TensorLoader(ds, batch_size=4), 2, checkpoint=ck, progress=False,
                     optimizer_name="adam")
    with assert_raises(ValueError, "batch_size=4", "batch_size=8"):
        training.fit(model(), data.TensorLoader(ds, batch_size=8), 2, checkpoint=ck, progress=False)
    torch.save(model().state_dict(), tmp_path / "plain.pt")
    with assert_raises(ValueError, "not a fit checkpoint"):
        training.fit(model(), data.TensorLoader(ds, batch_size=4), 2, checkpoint=str(tmp_path / "plain.pt"),
                     progress=False)
    for kw, word in ((dict(eval_every=0), "eval_every"), (dict(epochs=1.5), "epochs")):
        args = dict(epochs=1)
        args.update(kw)
        with assert_raises(ValueError, word):
            training.fit(model(), data.TensorLoader(ds, batch_size=4), progress=False, **args)
    for kw, word in ((dict(batch_size=2.5), "batch_size"), (dict(batch_size=True), "batch_size"),
                     (dict(rank=1), "rank, world_size"), (dict(seed=2 ** 62), "seed")):
        with assert_raises(ValueError, word):
            data.TensorLoader(ds, **kw)


def test_cli_names_an_unusable_out_folder(tmp_path, capsys):
    from fastorals import cli

    f = tmp_path / "file.txt"
    f.write_text("keep me")
    for out in (str(f), str(f / "sub"), ""):
        assert cli.main(["repro", "onepixel", "--smoke", "--out", out]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "Traceback" not in err
    assert f.read_text() == "keep me"
