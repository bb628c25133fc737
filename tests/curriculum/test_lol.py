"""Level-of-Learning semantics: the rule on scripted counts and scripted model outputs, the plan,
and the batched update against the class-by-class PIL reference."""

import pytest
import torch
from curriculum_helpers import PixelMLP, ScriptedModel, plan_for, tiny_pool
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals import augment
from fastorals import curriculum as cu
from fastorals.augment import opset as O
from fastorals.curriculum import reference as R
from fastorals.curriculum.lol import accept_fraction

# ----------------------------------------------------------------------------- the rule on counts


def _counts(levels, rates, num_test=10, max_level=10):
    """correct/trials tables where class c at level l gets round(rate * T (l+1)) right."""
    c = len(levels)
    correct = torch.zeros(c, max_level + 1, dtype=torch.int64)
    trials = torch.zeros(c, max_level + 1, dtype=torch.int64)
    for i, lc in enumerate(levels):
        for l in range(lc + 1):
            n = num_test * (l + 1)
            trials[i, l] = n
            correct[i, l] = int(rates[i][l] * n)
    return correct, trials


def test_rule_up_only_when_every_level_passes():
    levels = torch.tensor([3, 3, 3, 3])
    ok = [1.0] * 11
    rates = [ok, [1.0, 1.0, 0.5, 1.0, *ok[4:]], [0.5, 1.0, 1.0, 1.0, *ok[4:]], [1.0, 1.0, 1.0, 0.59, *ok[4:]]]
    correct, trials = _counts(levels.tolist(), rates)
    new, acc, tested = cu.lol_decision(levels, correct, trials, 0.6, 10)
    assert new.tolist() == [4, 2, 2, 2]
    assert acc.tolist() == [True, False, False, False] and tested.all()


def test_rule_ignores_levels_above_the_class_level():
    levels = torch.tensor([1])
    correct, trials = _counts([1], [[1.0] * 11])
    correct[0, 5], trials[0, 5] = 0, 60  # a failing entry above L_c is not part of the test
    assert cu.lol_decision(levels, correct, trials, 0.6, 10)[0].tolist() == [2]


def test_rule_threshold_is_inclusive_and_strict_mode_is_exclusive():
    levels = torch.tensor([0, 0, 0])
    trials = torch.zeros(3, 11, dtype=torch.int64)
    trials[:, 0] = 10
    correct = torch.zeros(3, 11, dtype=torch.int64)
    correct[:, 0] = torch.tensor([5, 6, 7])
    assert cu.lol_decision(levels, correct, trials, 0.6, 10)[0].tolist() == [0, 1, 1]  # 6 >= 0.6 * 10
    assert cu.lol_decision(levels, correct, trials, 0.6, 10, strict=True)[0].tolist() == [0, 0, 1]


def test_rule_clamps_to_zero_and_max_level():
    levels = torch.tensor([0, 10, 4])
    correct, trials = _counts([0, 10, 4], [[0.0] * 11, [1.0] * 11, [1.0] * 11], max_level=10)
    assert cu.lol_decision(levels, correct, trials, 0.6, 10)[0].tolist() == [0, 10, 5]
    correct, trials = _counts([0, 10, 4], [[1.0] * 11, [0.0] * 11, [0.0] * 11])
    assert cu.lol_decision(levels, correct, trials, 0.6, 10)[0].tolist() == [1, 9, 3]


def test_rule_keeps_classes_without_trials():
    levels = torch.tensor([2, 2])
    correct, trials = _counts([2, 2], [[1.0] * 11, [1.0] * 11])
    trials[1] = 0
    correct[1] = 0
    new, acc, tested = cu.lol_decision(levels, correct, trials, 0.6, 10)
    assert new.tolist() == [3, 2] and tested.tolist() == [True, False] and acc.tolist() == [True, False]


def test_accept_fraction_is_exact_for_decimals():
    assert accept_fraction(0.6) == accept_fraction(3 / 5) and accept_fraction(0.6).denominator == 5
    assert accept_fraction(1.0) == 1 and accept_fraction(0.0) == 0


@given(
    levels=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    seed=st.integers(0, 10_000),
    rate=st.sampled_from([0.0, 0.1, 0.5, 0.6, 0.75, 0.9, 1.0, 2 / 3]),
    strict=st.booleans(),
)
def test_property_rule_matches_reference(levels, seed, rate, strict):
    g = torch.Generator().manual_seed(seed)
    max_level = 6
    lv = torch.tensor(levels)
    trials = torch.randint(0, 4, (len(levels), max_level + 1), generator=g) * 5
    has_data = torch.rand(len(levels), 1, generator=g) < 0.8  # most classes have trials everywhere
    trials = torch.where(has_data, trials.clamp(min=5), trials)
    correct = (torch.rand(trials.shape, generator=g) * (trials + 1)).floor().long().clamp(max=trials)
    # exact ties with the threshold are the interesting cases
    tie = (trials * accept_fraction(rate).numerator) % accept_fraction(rate).denominator == 0
    pick = tie & (torch.rand(trials.shape, generator=g) < 0.5)
    correct = torch.where(pick, trials * accept_fraction(rate).numerator // accept_fraction(rate).denominator, correct)
    new = cu.lol_decision(lv, correct, trials, rate, max_level, strict=strict)[0]
    assert new.tolist() == R.lol_decision(levels, correct.tolist(), trials.tolist(), rate, max_level, strict)
    assert bool(((new - lv).abs() <= 1).all()) and int(new.min()) >= 0 and int(new.max()) <= max_level


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("mode", ["monotone", "official"])
def test_plan_layout_and_magnitudes(mode):
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4, magnitude_mode=mode, num_test=3)
    cur.set_levels([0, 2, 10, 5])
    plan = plan_for(cur, pool)
    sizes = cu.plan_sizes(cur.levels, pool.counts, 3)
    assert sizes.tolist() == [3, 18, 198, 63] and len(plan) == int(sizes.sum())
    for c, lc in enumerate([0, 2, 10, 5]):
        sel = plan.classes == c
        assert bool((plan.levels[sel] <= lc).all())
        for l in range(lc + 1):
            assert int(((plan.levels == l) & sel).sum()) == 3 * (l + 1)
        members = (pool.order[pool.starts[c]:pool.starts[c] + pool.counts[c]]).tolist()
        assert set(plan.index[sel].tolist()) <= set(members)
    # each sample of level l has exactly l ops, at the magnitude of level l in the chosen mode
    assert torch.equal(plan.chains.num_ops(), plan.levels)
    ops, mags = plan.chains.ops.long(), plan.chains.magnitudes
    for i in range(0, len(plan), 7):
        l = int(plan.levels[i])
        for j in range(l):
            op = int(ops[i, j])
            if not O.takes_value(op):
                continue
            if mode == "official":
                lo, hi = O.OFFICIAL_RANGES[op]
                want = lo + l / 30 * (hi - lo)
            else:
                ident = O.IDENTITY[op]
                strong = O.MONOTONE_STRONGEST[O.OP_NAMES[op]] * (8 if op in (O.TRANSLATE_X, O.TRANSLATE_Y) else 1)
                want = ident + l / 10 * (strong - ident)
            assert abs(float(mags[i, j]) - want) < 1e-9, (O.OP_NAMES[op], l, float(mags[i, j]), want)


def test_plan_image_choices_are_uniform_within_class():
    pool = tiny_pool(per_class=(7, 5, 3, 2))
    cur = cu.CurriculumAugment(4, num_test=400)
    cur.set_levels([1, 0, 0, 0])
    plan = plan_for(cur, pool)
    sel = plan.classes == 0
    hist = torch.bincount(plan.index[sel], minlength=len(pool))[pool.order[:7]]
    assert int(hist.sum()) == 1200 and int(hist.min()) > 1200 / 7 * 0.7


# ----------------------------------------------------------------------------- scripted model outputs


@pytest.mark.parametrize("mode", ["monotone", "official"])
def test_update_with_scripted_model(mode):
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4, magnitude_mode=mode, eval_batch_size=17)
    cur.set_levels([0, 3, 10, 2])
    plan = plan_for(cur, pool)

    def script(c, l, k):
        if c == 0:
            return k < 6  # 6 of 10 right at level 0: passes exactly at the threshold
        if c == 1:
            return not (l == 2 and k >= 17)  # level 2 gets 17/30 < 18: fails -> down
        if c == 2:
            return True  # all right at level 10: stays clamped at 10
        return k < 0.6 * 10 * (l + 1)  # exactly 60% at every level: up

    model = ScriptedModel(plan, 4, script).train()
    res = cur.update(model, pool)
    assert model.cursor == len(plan) == res.num_total == res.num_evaluated  # every sample evaluated once
    assert not any(model.modes_seen) and model.training  # eval mode during the test, restored after
    assert res.levels_after.tolist() == cur.levels.tolist() == [1, 2, 10, 3]
    assert res.accepted.tolist() == [True, False, True, True]
    assert res.correct[1, 2] == 17 and res.trials[1, 2] == 30 and res.trials[2].tolist() == [10 * (l + 1) for l in range(11)]
    assert cur.history.tolist() == [[1, 2, 10, 3]]


def test_update_strict_mode_and_logit_adjustment():
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4, strict_accept=True)
    plan = plan_for(cur, pool)
    model = ScriptedModel(plan, 4, lambda c, l, k: k < 6)  # 60% exactly: strict rejects
    assert cur.update(model, pool).levels_after.tolist() == [0, 0, 0, 0]

    class Constant(torch.nn.Module):  # always class 0; minus tau * log prior, always class 1 (the rarest)
        def forward(self, x):
            z = torch.zeros(x.shape[0], 4)
            z[:, 0] = 0.5
            return z

    counts = torch.tensor([1000.0, 1.0, 2.0, 4.0])
    for tau, expected in ((0.0, [1, 0, 0, 0]), (1.0, [0, 1, 0, 0]), (0.05, [1, 0, 0, 0])):
        c2 = cu.CurriculumAugment(4, logit_adjustment=tau, class_counts=counts)
        assert c2.update(Constant(), pool).levels_after.tolist() == expected


def test_update_matches_class_by_class_pil_reference():
    pool = tiny_pool(per_class=(9, 6, 4, 3), size=12)
    model = PixelMLP(3 * 12 * 12, 4, seed=1)
    for mode, levels, tau in (("monotone", [0, 3, 6, 1], 0.0), ("official", [2, 0, 5, 4], 1.0)):
        cur = cu.CurriculumAugment(4, magnitude_mode=mode, accept_rate=0.3, num_test=4, cutout=4,
                                   mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), logit_adjustment=tau,
                                   class_counts=[9, 6, 4, 3], eval_batch_size=50)
        cur.set_levels(levels)
        plan = plan_for(cur, pool)
        res = cur.update(model, pool)
        lp = torch.log(torch.tensor([9.0, 6, 4, 3]) / 22).float() if tau else None
        new, correct, trials = R.lol_update(model, pool, levels, plan, accept_rate=0.3, max_level=10, num_test=4,
                                            mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), log_prior=lp, tau=tau)
        assert res.correct.tolist() == correct and res.trials.tolist() == trials
        assert res.levels_after.tolist() == new
        assert 0 < int(res.correct.sum()) < int(res.trials.sum())  # a non-trivial test


def test_update_same_with_reference_augment_backend():
    pool = tiny_pool(size=10)
    model = PixelMLP(300, 4, seed=2)
    results = []
    for backend in ("reference", None):
        cur = cu.CurriculumAugment(4, num_test=3, accept_rate=0.2)
        cur.set_levels([1, 4, 2, 0])
        if backend:
            with fastorals.use_backend(backend):
                results.append(cur.update(model, pool))
        else:
            results.append(cur.update(model, pool))
    assert torch.equal(results[0].correct, results[1].correct)
    assert torch.equal(results[0].levels_after, results[1].levels_after)


def test_update_accepts_list_and_dataset_and_grayscale():
    from fastorals.data import ImageDataset

    pool = tiny_pool(channels=1)
    model = PixelMLP(64, 4)
    per_class = [pool.images[pool.order[pool.starts[c]:pool.starts[c] + pool.counts[c]]] for c in range(4)]
    ds = ImageDataset(pool.images, torch.empty(len(pool), dtype=torch.int64).index_put_(
        (pool.order,), torch.repeat_interleave(torch.arange(4), pool.counts)))
    outs = []
    for src in (pool, per_class, ds):
        cur = cu.CurriculumAugment(4, num_test=2)
        cur.set_levels([2, 1, 0, 3])
        outs.append(cur.update(model, src))
    # same classes, same per-class images (possibly reordered): the same test sizes and counts shape
    for o in outs:
        assert o.trials.sum(1).tolist() == [12, 6, 2, 20]
    assert torch.equal(outs[0].correct, outs[2].correct)


def test_update_with_a_real_resnet_in_train_mode_and_eval_batching_invariance():
    from fastorals import models

    class Double(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.double())

    pool = tiny_pool(size=8)
    torch.manual_seed(0)
    model = Double(models.resnet20(num_classes=4, width=0.25).double()).train()
    model(torch.rand(16, 3, 8, 8))  # move the BatchNorm running statistics off their init
    res = []
    for bs in (7, 1000):
        cur = cu.CurriculumAugment(4, num_test=2, eval_batch_size=bs)
        cur.set_levels([1, 2, 0, 3])
        res.append(cur.update(model, pool))
        assert model.training and model.net.layer1[0].norm1.training  # restored
    # eval mode: BatchNorm uses running statistics, so the batch split cannot change a prediction
    assert torch.equal(res[0].correct, res[1].correct)


def test_model_with_wrong_logits_shape_raises():
    pool = tiny_pool()
    cur = cu.CurriculumAugment(4)
    with pytest.raises(ValueError, match="model: expected logits"):
        cur.update(lambda x: torch.zeros(x.shape[0], 3), pool)


def test_pool_errors():
    imgs = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="images"):
        cu.ClassPool(imgs.float(), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        cu.ClassPool(imgs, torch.tensor([0, 1, 2, 3, 4]), num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        cu.ClassPool(imgs, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"images_by_class\[1\]"):
        cu.ClassPool.from_list([imgs, torch.zeros(2, 3, 9, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"images.*rank 4"):
        cu.ClassPool(imgs[0], torch.zeros(3, dtype=torch.int64))


def test_augment_of_plan_equals_batch_augment_call():
    """The LoL test augments with the same kernel and draws as a BatchAugment call would."""
    pool = tiny_pool(size=12)
    cur = cu.CurriculumAugment(4, cutout=6)
    cur.set_levels([2, 2, 2, 2])
    plan = plan_for(cur, pool)
    x = augment.apply_chains(pool.images[plan.index], plan.chains.ops, plan.chains.magnitudes, plan.chains.signs,
                             crop=plan.pipeline.crop, flip=plan.pipeline.flip, cutout=plan.pipeline.cutout,
                             out_dtype=torch.float32)
    seen = []
    cur.update(lambda t: (seen.append(t.clone()), torch.zeros(t.shape[0], 4))[1], pool)
    assert torch.equal(torch.cat(seen), x)
