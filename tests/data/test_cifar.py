import os
import pickle

import numpy as np
import pytest
import torch

from fastorals.data import UnsafePickleError, load_cifar10, load_cifar100, safe_load_pickle, write_cifar_batch
from fastorals.testing import assert_raises


def _write(path, d):
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def _make_cifar10(root, n_per_batch=7, batches=2, seed=0):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    all_x, all_y = [], []
    for b in range(batches):
        x = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=n_per_batch).tolist()
        _write(os.path.join(d, f"data_batch_{b + 1}"), {b"batch_label": b"x", b"data": x, b"labels": y})
        all_x.append(x)
        all_y += y
    xt = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    _write(os.path.join(d, "test_batch"), {b"data": xt, b"labels": [1, 2, 3, 4, 5]})
    names = [f"c{i}".encode() for i in range(10)]
    _write(os.path.join(d, "batches.meta"), {b"label_names": names, b"num_vis": 3072})
    return np.concatenate(all_x), np.array(all_y), xt


def test_load_cifar10_matches_written_files(tmp_path):
    x, y, xt = _make_cifar10(str(tmp_path))
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        s = load_cifar10(root)
        assert s.train.images.dtype == torch.uint8 and s.train.images.shape == (14, 3, 32, 32)
        assert torch.equal(s.train.images.reshape(14, -1), torch.from_numpy(x))
        assert s.train.labels.tolist() == y.tolist()
        assert torch.equal(s.test.images.reshape(5, -1), torch.from_numpy(xt))
        assert s.test.labels.tolist() == [1, 2, 3, 4, 5]
        assert s.classes == [f"c{i}" for i in range(10)]
    # channel layout: first 1024 values of a row are the red plane
    assert torch.equal(s.train.images[0, 0].flatten(), torch.from_numpy(x[0, :1024]))


def test_load_cifar100_fine_and_coarse(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    _write(d / "train", {b"data": x, b"fine_labels": [0, 99, 5, 6, 7, 8], b"coarse_labels": [0, 19, 1, 1, 2, 2]})
    _write(d / "test", {b"data": x[:2], b"fine_labels": [3, 4], b"coarse_labels": [0, 1]})
    _write(d / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                        b"coarse_label_names": [f"g{i}".encode() for i in range(20)]})
    fine = load_cifar100(tmp_path)
    coarse = load_cifar100(tmp_path, coarse=True)
    assert fine.train.labels.tolist() == [0, 99, 5, 6, 7, 8] and fine.num_classes == 100
    assert coarse.train.labels.tolist() == [0, 19, 1, 1, 2, 2] and coarse.classes[19] == "g19"


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _write(d / "data_batch_1", {b"data": _Evil(str(marker)), b"labels": [0]})
    _write(d / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    with assert_raises(UnsafePickleError, "refused", "system"):
        load_cifar10(tmp_path)
    assert not marker.exists(), "the crafted pickle ran code"
    # a generic global (e.g. builtins.eval) is refused too
    evil2 = tmp_path / "evil2"
    with open(evil2, "wb") as f:
        f.write(b"cbuiltins\neval\n(Vprint(1)\ntR.")
    with assert_raises(UnsafePickleError, "builtins.eval"):
        safe_load_pickle(evil2)


def test_bad_cifar_dirs_and_contents(tmp_path):
    with assert_raises(FileNotFoundError, "root", "cifar-10-batches-py"):
        load_cifar10(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _write(d / "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    _write(d / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    with assert_raises(ValueError, "1 labels for 2 images"):
        load_cifar10(tmp_path)
    _write(d / "data_batch_1", {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]})
    with assert_raises(ValueError, "uint8"):
        load_cifar10(tmp_path)


def test_write_cifar_batch_round_trip(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([3, 1, 4, 1])
    write_cifar_batch(d / "data_batch_1", x, y)
    write_cifar_batch(d / "test_batch", x[:2], y[:2])
    s = load_cifar10(tmp_path)
    assert torch.equal(s.train.images, x) and torch.equal(s.train.labels, y)
    with pytest.raises(ValueError, match="images"):
        write_cifar_batch(d / "bad", x.float(), y)


def test_unreadable_files_name_themselves(tmp_path):
    from fastorals.data import CifarFormatError

    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x = np.zeros((2, 3072), np.uint8)
    _write(d / "test", {b"data": x, b"fine_labels": [0, 1]})
    with assert_raises(FileNotFoundError, "train", "missing"):
        load_cifar100(tmp_path)
    (d / "train").write_bytes(b"%" + os.urandom(64))
    with assert_raises(CifarFormatError, str(d / "train"), "not a readable"):
        load_cifar100(tmp_path)
    _write(d / "train", {b"data": x, b"fine_labels": [0, 1]})
    whole = (d / "train").read_bytes()
    (d / "train").write_bytes(whole[: len(whole) // 2])  # cut off partway
    with assert_raises(CifarFormatError, str(d / "train")):
        load_cifar100(tmp_path)
    _write(d / "train", [1, 2, 3])
    with assert_raises(CifarFormatError, "expected a dict"):
        load_cifar100(tmp_path)
    assert issubclass(CifarFormatError, ValueError)


def test_repro_cli_reports_unreadable_data_without_a_traceback(tmp_path, capsys):
    from fastorals import cli

    assert cli.main(["repro", "curriculum", "--smoke", "--out", str(tmp_path / "o"),
                     "--cifar100", str(tmp_path / "nope")]) == 2
    assert "--cifar100" in capsys.readouterr().err
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _write(d / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]})
    (d / "train").write_bytes(b"%garbage")
    before = os.environ.get("FASTORALS_CIFAR100_ROOT")
    assert cli.main(["repro", "curriculum", "--smoke", "--out", str(tmp_path / "o"), "--cifar100", str(tmp_path)]) == 2
    assert os.environ.get("FASTORALS_CIFAR100_ROOT") == before  # the option applies to that run only
    err = capsys.readouterr().err
    assert "train" in err and "not a readable CIFAR pickle" in err and "Traceback" not in err


def test_repro_cli_refuses_a_data_option_the_reproduction_does_not_read(tmp_path, capsys):
    from fastorals import cli

    assert cli.main(["repro", "curriculum", "--smoke", "--out", str(tmp_path), "--cifar10", str(tmp_path)]) == 2
    assert "--cifar10" in capsys.readouterr().err
    assert cli.main(["repro", "onepixel", "--smoke", "--out", str(tmp_path), "--cifar100", str(tmp_path)]) == 2
    assert "--cifar100" in capsys.readouterr().err
    for name, reads in (("lipschitz", "quick and full"), ("rebasin", "full")):  # smoke runs use procedural data
        assert cli.main(["repro", name, "--smoke", "--out", str(tmp_path), "--cifar10", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "smoke run" in err and reads in err
