"""CurriculumAugment: training-time augmentation, state and exact resume (also through fit), errors."""

import pytest
import torch
from curriculum_helpers import PixelMLP, tiny_pool

from fastorals import augment, data, training
from fastorals import curriculum as cu
from fastorals.curriculum.api import _TRAIN_STREAM
from fastorals.testing import assert_raises


def _batch(b=24, size=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, c, (b,), generator=g))


def test_call_is_batch_augment_at_the_class_levels():
    x, y = _batch()
    cur = cu.CurriculumAugment(4, aug_prob=0.5, cutout=4)
    cur.set_levels([0, 3, 10, 6])
    out = cur(x, y)
    assert out.shape == x.shape and out.dtype == torch.float32
    # the same draws by hand: derived generator -> coin flips -> BatchAugment
    g = torch.Generator().manual_seed(cu.derive_seed(0, _TRAIN_STREAM, 0, 0))
    coin = torch.rand(24, generator=g) < 0.5
    s = torch.where(coin, torch.tensor([0, 3, 10, 6])[y], 0)
    ref = augment.BatchAugment(crop_padding=4, flip_prob=0.5, cutout=4, out_dtype=torch.float32)(x, s, g)
    assert torch.equal(out, ref)
    assert 0 < int(coin.sum()) < 24


def test_strengths_follow_levels_and_aug_prob():
    _, y = _batch(b=4000)
    levels = torch.tensor([0, 3, 10, 6])
    for p in (0.0, 1.0, 0.5):
        cur = cu.CurriculumAugment(4, aug_prob=p)
        cur.set_levels(levels)
        s = cur.strengths(y, torch.Generator().manual_seed(1))
        augmented = s == levels[y]
        assert bool((augmented | (s == 0)).all())
        if p == 0.0:
            assert int(s.sum()) == 0
        elif p == 1.0:
            assert torch.equal(s, levels[y])
        else:
            frac = float((s[y != 0] > 0).double().mean())
            assert abs(frac - 0.5) < 0.05


def test_calls_are_deterministic_and_differ_from_call_to_call():
    x, y = _batch()
    a, b = cu.CurriculumAugment(4, aug_prob=1.0), cu.CurriculumAugment(4, aug_prob=1.0)
    for cur in (a, b):
        cur.set_levels([5, 5, 5, 5])
    a1, a2 = a(x, y), a(x, y)
    assert torch.equal(a1, b(x, y)) and torch.equal(a2, b(x, y))
    assert not torch.equal(a1, a2)
    c = cu.CurriculumAugment(4, aug_prob=1.0, seed=1)
    c.set_levels([5, 5, 5, 5])
    assert not torch.equal(c(x, y), a1)


def test_call_with_normalize_and_official_mode():
    x, y = _batch(size=32)
    cur = cu.CurriculumAugment(4, magnitude_mode="official", mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD,
                               cutout=16, aug_prob=1.0)
    cur.set_levels([10, 10, 10, 10])
    out = cur(x, y)
    assert out.dtype == torch.float32 and float(out.min()) < 0  # normalized
    pipe = augment.BatchAugment.cifar(cutout=16, magnitude_mode="official", out_dtype=torch.float32)
    cur2 = cu.CurriculumAugment(4, magnitude_mode="official", pipeline=pipe, aug_prob=1.0)
    cur2.set_levels([10, 10, 10, 10])
    assert torch.equal(cur2(x, y), out)


def test_state_dict_round_trip_continues_exactly():
    pool = tiny_pool()
    model = PixelMLP(192, 4, seed=3)
    x, y = _batch(b=16)
    ref = cu.CurriculumAugment(4, num_test=3, accept_rate=0.25)
    outs_ref = []
    for step in range(4):
        ref.update(model, pool)
        outs_ref.append(ref(x, y))
        if step == 1:
            saved = ref.state_dict()
    resumed = cu.CurriculumAugment(4, num_test=3, accept_rate=0.25)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.levels, saved["levels"]) and resumed.num_updates == 2
    outs = []
    for _ in range(2):
        resumed.update(model, pool)
        outs.append(resumed(x, y))
    assert torch.equal(outs[0], outs_ref[2]) and torch.equal(outs[1], outs_ref[3])
    assert torch.equal(resumed.levels, ref.levels) and torch.equal(resumed.history, ref.history)
    assert ref.history.shape == (4, 4) and int(ref.levels.max()) > 0  # levels moved


def test_state_dict_survives_weights_only_save(tmp_path):
    cur = cu.CurriculumAugment(6, max_level=7)
    cur.set_levels([0, 1, 2, 3, 7, 5])
    path = tmp_path / "cur.pt"
    training.save_checkpoint(str(path), {"cur": cur.state_dict()})
    back = cu.CurriculumAugment(6, max_level=7)
    back.load_state_dict(training.load_checkpoint(str(path))["cur"])
    assert back.levels.tolist() == [0, 1, 2, 3, 7, 5]


def test_resume_through_fit_checkpoint_is_exact(tmp_path):
    full = data.synthetic_images(240, num_classes=4, size=8, seed=0)
    lt = full.subset(data.long_tailed_indices(full.labels, imbalance_ratio=10, num_classes=4))
    pool = cu.ClassPool(lt.images, lt.labels, 4)
    counts = lt.class_counts()

    def run(ckpt, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        torch.manual_seed(1234 if stop_at is None else 99)  # a resumed process starts from another RNG state
        cur = cu.CurriculumAugment(4, num_test=3, accept_rate=0.3, eval_batch_size=64)
        loss = cu.make_loss("ce_drw", counts, drw_epoch=2)
        hook = cur.hook(pool)

        def on_epoch_start(epoch, m):
            if epoch == stop_at:
                raise KeyboardInterrupt
            hook(epoch, m)
            loss.set_epoch(epoch)

        loader = data.TensorLoader(lt, batch_size=32, seed=0)
        training.fit(model, loader, 4, lr=0.05, loss_fn=loss, augment=cur, on_epoch_start=on_epoch_start,
                     checkpoint=str(ckpt), progress=False, extra_state={"curriculum": cur})
        return model, cur

    m_full, c_full = run(tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", stop_at=2)
    m_res, c_res = run(tmp_path / "b.pt")  # a new process: resumes at epoch 2
    for p, q in zip(m_full.parameters(), m_res.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(c_full.levels, c_res.levels) and torch.equal(c_full.history, c_res.history)
    assert c_full.num_updates == c_res.num_updates == 4 and c_res.history.shape == (4, 4)
    assert int(c_full.history.max()) > 0  # the levels moved during the run


def test_hook_runs_every_k_epochs():
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4, num_test=1)
    hook = cur.hook(pool, every=3)
    model = PixelMLP(192, 4)
    for epoch in range(7):
        hook(epoch, model)
    assert cur.num_updates == 3  # epochs 0, 3, 6


def test_errors_name_the_argument():
    x, y = _batch()
    cur = cu.CurriculumAugment(4)
    with assert_raises(ValueError, "labels", "num_classes=4"):
        cur(x, torch.full((24,), 4))
    with assert_raises(ValueError, "labels", "num_classes=4"):
        cur(x, torch.full((24,), -1))
    with assert_raises(ValueError, "labels", "24"):
        cur(x, y[:5])
    with assert_raises(ValueError, "labels", "rank 1"):
        cur(x, y.view(4, 6))
    with assert_raises(TypeError, "labels"):
        cur(x, y.float())
    with assert_raises(TypeError, "images", "uint8"):
        cur(x.float(), y)
    with assert_raises(ValueError, "images", "rank 4"):
        cur(x[0], y[:3])
    with assert_raises(ValueError, "levels", "max_level=10"):
        cur.set_levels([0, 11, 0, 0])
    with assert_raises(ValueError, "levels", "max_level=10"):
        cur.set_levels([0, -1, 0, 0])
    with assert_raises(ValueError, "levels", "num_classes=4"):
        cur.set_levels([0, 1, 0])
    with assert_raises(TypeError, "levels"):
        cur.set_levels(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    bad = cur.state_dict()
    bad["levels"] = torch.tensor([0, 12, 0, 0])
    with assert_raises(ValueError, "levels", "max_level"):
        cur.load_state_dict(bad)
    with assert_raises(ValueError, "num_classes"):
        cu.CurriculumAugment(5).load_state_dict(cur.state_dict())
    with assert_raises(ValueError, "max_level"):
        cu.CurriculumAugment(4, max_level=5).load_state_dict(cur.state_dict())
    with assert_raises(KeyError, "levels"):
        cur.load_state_dict({"num_classes": 4})
    for kwargs, word in (({"num_classes": 0}, "num_classes"), ({"num_classes": 4, "max_level": 0}, "max_level"),
                         ({"num_classes": 4, "accept_rate": 1.5}, "accept_rate"),
                         ({"num_classes": 4, "aug_prob": -0.1}, "aug_prob"),
                         ({"num_classes": 4, "num_test": 0}, "num_test"),
                         ({"num_classes": 4, "magnitude_mode": "paper"}, "magnitude_mode"),
                         ({"num_classes": 4, "eval_batch_size": 0}, "eval_batch_size"),
                         ({"num_classes": 4, "logit_adjustment": float("nan")}, "logit_adjustment"),
                         ({"num_classes": 4, "class_counts": [1, 2]}, "class_counts")):
        with assert_raises(ValueError, word):
            cu.CurriculumAugment(**kwargs)
    with assert_raises(ValueError, "pipeline", "max_level"):
        cu.CurriculumAugment(4, max_level=5, pipeline=augment.BatchAugment())
    with assert_raises(ValueError, "pipeline", "magnitude_mode"):
        cu.CurriculumAugment(4, magnitude_mode="official", pipeline=augment.BatchAugment())
    with assert_raises(ValueError, "pipeline", "cutout"):
        cu.CurriculumAugment(4, pipeline=augment.BatchAugment(), cutout=8)
    pool = tiny_pool()
    with assert_raises(ValueError, "images_by_class", "5"):
        cu.CurriculumAugment(5).update(PixelMLP(192, 5), pool)
    with assert_raises(ValueError, "images_by_class", "one tensor per class"):
        cur.update(PixelMLP(192, 4), [pool.images[:2]] * 3)
    with assert_raises(TypeError, "images_by_class"):
        cur.update(PixelMLP(192, 4), pool.images)
    with assert_raises(ValueError, "class_counts", "positive"):
        cu.CurriculumAugment(4, logit_adjustment=1.0, class_counts=[3, 0, 1, 1]).update(PixelMLP(192, 4), pool)
    with assert_raises(ValueError, "every"):
        cur.hook(pool, every=0)


def test_malformed_states_are_refused_and_leave_the_curriculum_as_it_was():
    cur = cu.CurriculumAugment(4)
    cur.set_levels([1, 2, 3, 4])
    cur.update(PixelMLP(192, 4), tiny_pool())
    good = cur.state_dict()
    assert good["history"].shape == (1, 4)
    cases = [
        ("history", torch.full((1, 4), 99), ValueError, ("history", "max_level")),
        ("history", torch.full((1, 4), 0.5), TypeError, ("history", "integer")),
        ("history", torch.zeros(3, 4, dtype=torch.int64), ValueError, ("history", "one row per update")),
        ("num_updates", -3, ValueError, ("num_updates", ">= 0")),
        ("num_calls", 2.7, ValueError, ("num_calls", "int")),
        ("version", 99, ValueError, ("version", "99")),
        ("num_classes", "4x", ValueError, ("num_classes", "4x")),
        ("seed", 1.5, ValueError, ("seed",)),
    ]
    for key, value, exc, words in cases:
        fresh = cu.CurriculumAugment(4)
        before = fresh.state_dict()
        bad = dict(good)
        bad[key] = value
        with assert_raises(exc, *words):
            fresh.load_state_dict(bad)
        after = fresh.state_dict()
        assert all(torch.equal(torch.as_tensor(after[k]), torch.as_tensor(before[k])) for k in before), key
    fresh = cu.CurriculumAugment(4)
    fresh.load_state_dict({k: (torch.tensor(v) if isinstance(v, int) else v) for k, v in good.items()})
    assert torch.equal(fresh.levels, cur.levels) and fresh.num_updates == 1  # 0-dim int tensors load too


def test_configurations_outside_the_op_domains_fail_at_construction():
    # the LoL test and training draw from the same checked table: neither can use a value the
    # other refuses, and the kernels never see one
    for strongest in ({"GaussianBlur": 1e20}, {"ResizeCrop": 0.5}, {"Posterize": 20.0}, {"ShearX": 500.0}):
        name = next(iter(strongest))
        with assert_raises(ValueError, "strongest", name, "domain"):
            cu.CurriculumAugment(2, strongest=strongest, ops=[name])


def test_evaluate_plan_refuses_levels_past_its_tables():
    from fastorals.curriculum import lol

    pool = tiny_pool()
    cur = cu.CurriculumAugment(4)
    plan = lol.draw_plan(torch.tensor([5, 0, 0, 0]), pool, 2, cur.pipeline, torch.Generator().manual_seed(0))
    pred = lambda x: torch.zeros(x.shape[0], dtype=torch.int64)
    with assert_raises(ValueError, "max_level", "5"):
        lol.evaluate_plan(pred, pool, plan, cur.pipeline, num_classes=4, max_level=2)
    with assert_raises(ValueError, "num_classes", "3"):
        lol.evaluate_plan(pred, pool, plan, cur.pipeline, num_classes=1, max_level=10)
    c, t = lol.evaluate_plan(pred, pool, plan, cur.pipeline, num_classes=4, max_level=5)
    assert t[0].tolist() == [2, 4, 6, 8, 10, 12] and int(t[1:].sum()) == 3 * 2


def test_repr_and_history_empty():
    cur = cu.CurriculumAugment(3)
    assert "num_classes=3" in repr(cur)
    assert cur.history.shape == (0, 3)


@pytest.mark.gpu
def test_cuda_images_and_model():
    pool = tiny_pool(size=16)
    pool_cuda = cu.ClassPool(pool.images.cuda(), torch.repeat_interleave(torch.arange(4), pool.counts)[
        torch.argsort(pool.order)].cuda(), 4)
    model = PixelMLP(768, 4).cuda()
    cur = cu.CurriculumAugment(4)
    res = cur.update(model, pool_cuda)
    assert res.levels_after.device.type == "cpu"
    x, y = _batch(size=16)
    out = cur(x.cuda(), y.cuda())
    assert out.is_cuda and out.dtype == torch.float32


def test_states_without_full_history_resume_and_round_trip():
    # a state loaded without its history keeps counting updates: its later states (fewer history
    # rows than updates) load again; NumPy integer counters load like ints
    np = pytest.importorskip("numpy")
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4)
    cur.update(PixelMLP(192, 4), pool)
    cur.update(PixelMLP(192, 4), pool)
    st = cur.state_dict()
    del st["history"]
    st["num_calls"] = np.int64(st["num_calls"])
    c2 = cu.CurriculumAugment(4)
    c2.load_state_dict(st)
    c2.update(PixelMLP(192, 4), pool)
    again = c2.state_dict()
    assert again["num_updates"] == 3 and again["history"].shape == (1, 4)
    c3 = cu.CurriculumAugment(4)
    c3.load_state_dict(again)
    assert torch.equal(c3.history, c2.history) and c3.num_updates == 3


@pytest.mark.parametrize("module", ["fastorals.augment", "fastorals.augment.api", "fastorals.curriculum",
                                    "fastorals.curriculum.api", "fastorals.curriculum.lol"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_numpy_and_tensor_scalars_are_accepted_and_other_types_named():
    import numpy as np

    cur = cu.CurriculumAugment(np.int64(4), max_level=torch.tensor(5), accept_rate=np.float64(0.6),
                               aug_prob=np.float32(0.5), seed=np.int32(7), logit_adjustment=torch.tensor(1.0))
    assert (cur.num_classes, cur.max_level, cur.seed) == (4, 5, 7) and type(cur.num_classes) is int
    assert cu.accept_fraction(cur.accept_rate) == cu.accept_fraction(0.6) and cur.logit_adjustment == 1.0
    assert cu.ClassPool(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0, 2], np.int64(3)).num_classes == 3
    with assert_raises(TypeError, "strict_accept", "bool"):
        cu.CurriculumAugment(4, strict_accept="no")
    with assert_raises(ValueError, "accept_rate"):
        cu.CurriculumAugment(4, accept_rate=True)
    with assert_raises(ValueError, "aug_prob"):
        cu.CurriculumAugment(4, aug_prob=torch.tensor([0.5, 0.5]))


def test_a_refused_call_draws_nothing():
    x, y = _batch()
    cur, ref = cu.CurriculumAugment(4), cu.CurriculumAugment(4)
    cur.set_levels([3, 1, 0, 2])
    ref.set_levels([3, 1, 0, 2])
    with assert_raises(ValueError, "images", "channels"):
        cur(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), y[:2])
    assert torch.equal(cur(x, y), ref(x, y))  # the failed call did not move the call counter


def test_a_relabelled_dataset_is_grouped_again():
    x, y = _batch(b=40)
    ds = data.ImageDataset(x, y)
    cur = cu.CurriculumAugment(4, num_test=2)
    cur.update(PixelMLP(192, 4), ds)
    first = cur._pool_cache[1]
    cur.update(PixelMLP(192, 4), ds)
    assert cur._pool_cache[1] is first  # grouped once while the labels are unchanged
    ds.labels = torch.zeros_like(y)  # a new labels tensor: every image in class 0
    cur.update(PixelMLP(192, 4), ds)
    assert cur._pool_cache[1].counts.tolist() == [40, 0, 0, 0]
    ds.labels[:10] = 3  # changed in place
    cur.update(PixelMLP(192, 4), ds)
    assert cur._pool_cache[1].counts.tolist() == [30, 0, 0, 10]


def test_models_of_other_dtypes_get_inputs_of_their_dtype():
    pool = tiny_pool()

    class Net(torch.nn.Module):  # no cast of its own: float64 weights need float64 inputs
        def __init__(self, dtype):
            super().__init__()
            torch.manual_seed(0)
            self.f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)).to(dtype)

        def forward(self, x):
            return self.f(x)

    results = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        cur = cu.CurriculumAugment(4, num_test=3)
        cur.set_levels([2, 1, 0, 3])
        results[dtype] = cur.update(Net(dtype), pool)
    assert torch.equal(results[torch.float64].correct, results[torch.float32].correct)  # same weights, same calls
    assert int(results[torch.float32].correct.sum()) > 0
    assert torch.equal(results[torch.bfloat16].trials, results[torch.float32].trials)  # runs (pixels rounded)


def test_nan_logits_are_refused_and_leave_the_levels():
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4, num_test=2)
    cur.set_levels([2, 1, 0, 3])
    nan_model = lambda x: torch.full((x.shape[0], 4), float("nan"))  # argmax would say class 0 every time
    with assert_raises(ValueError, "model", "NaN"):
        cur.update(nan_model, pool)
    assert cur.levels.tolist() == [2, 1, 0, 3] and cur.num_updates == 0


def test_plan_building_blocks_check_their_arguments():
    from fastorals.curriculum import lol

    pool = tiny_pool()
    cur = cu.CurriculumAugment(4)
    g = torch.Generator().manual_seed(0)
    plan = lol.draw_plan([1, 0, 2, 0], pool, 2, cur.pipeline, g)  # a list of levels is fine
    assert len(plan) == 2 * 3 + 2 + 2 * 6 + 2
    with assert_raises(ValueError, "levels", ">= 0"):
        lol.draw_plan(torch.tensor([1, -1, 0, 0]), pool, 2, cur.pipeline, g)
    with assert_raises(ValueError, "levels", "num_classes=4"):
        lol.draw_plan(torch.tensor([1, 0, 0]), pool, 2, cur.pipeline, g)
    with assert_raises(TypeError, "levels"):
        lol.draw_plan(torch.tensor([1.0, 0, 0, 0]), pool, 2, cur.pipeline, g)
    with assert_raises(ValueError, "num_test"):
        lol.draw_plan(torch.tensor([1, 0, 0, 0]), pool, 0, cur.pipeline, g)
    one = lambda x: torch.zeros(1, dtype=torch.int64)  # one prediction for a whole batch
    with assert_raises(ValueError, "predict", "one per input"):
        lol.evaluate_plan(one, pool, plan, cur.pipeline, num_classes=4, max_level=10)
    pred = lambda x: torch.zeros(x.shape[0], dtype=torch.int64)
    with assert_raises(ValueError, "batch_size"):
        lol.evaluate_plan(pred, pool, plan, cur.pipeline, num_classes=4, max_level=10, batch_size=0)
    correct, trials = lol.evaluate_plan(pred, pool, plan, cur.pipeline, num_classes=4, max_level=10)
    for rate in (1.5, -1, float("nan")):
        with assert_raises(ValueError, "accept_rate"):
            lol.lol_decision(torch.tensor([1, 0, 2, 0]), correct, trials, rate, 10)
    with assert_raises(ValueError, "correct, trials"):
        lol.lol_decision(torch.tensor([1, 0, 2, 0]), correct, trials, 0.6, 5)


def test_logit_adjustment_names_the_empty_class_and_where_its_count_came_from():
    pool = tiny_pool(per_class=(3, 0, 2, 2))
    with assert_raises(ValueError, "images_by_class", "[1]"):
        cu.CurriculumAugment(4, logit_adjustment=1.0).update(PixelMLP(192, 4), pool)
    with assert_raises(ValueError, "class_counts", "[3]"):
        cu.CurriculumAugment(4, logit_adjustment=1.0, class_counts=[3, 1, 1, 0]).update(PixelMLP(192, 4), pool)
