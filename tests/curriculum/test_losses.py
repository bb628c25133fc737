"""Long-tailed losses against their written-out definitions: values, gradients, DRW switch, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastorals import curriculum as cu
from fastorals.curriculum import reference as R
from fastorals.testing import assert_close, assert_raises, make_noncontiguous

COUNTS = [500, 300, 120, 77, 40, 19, 9, 5]


def _data(b, c, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, c, (b,), generator=g)
    return z, y


def _counts(c, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(1, 600, (c,), generator=g)


# ----------------------------------------------------------------------------- weights and margins


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_match_definition(beta):
    w = cu.class_balanced_weights(COUNTS, beta, dtype=torch.float64)
    assert_close(w, torch.tensor(R.class_balanced_weights(COUNTS, beta), dtype=torch.float64))
    assert_close(w.sum(), torch.tensor(float(len(COUNTS)), dtype=torch.float64))
    if beta == 0.0:
        assert torch.equal(w, torch.ones(len(COUNTS), dtype=torch.float64))
    else:
        assert bool((w[1:] >= w[:-1]).all())  # rarer classes weigh more


def test_class_balanced_weights_tend_to_inverse_frequency():
    w = cu.class_balanced_weights(COUNTS, 1 - 1e-12, dtype=torch.float64)
    inv = 1.0 / torch.tensor(COUNTS, dtype=torch.float64)
    assert_close(w, inv / inv.sum() * len(COUNTS), kind="grad")


def test_ldam_margins_proportional_to_quarter_power():
    m = cu.ldam_margins(COUNTS, 0.5, dtype=torch.float64)
    assert_close(m, torch.tensor(R.ldam_margins(COUNTS, 0.5), dtype=torch.float64))
    assert math.isclose(float(m.max()), 0.5) and int(m.argmax()) == len(COUNTS) - 1
    ratio = m * torch.tensor(COUNTS, dtype=torch.float64).pow(0.25)
    assert_close(ratio, ratio[0].expand_as(ratio))


# ----------------------------------------------------------------------------- values vs definitions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,c", [(1, 3), (7, 8), (97, 8), (33, 100)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_definitions(dtype, b, c, reduction):
    z, y = _data(b, c, dtype, seed=b + c)
    counts = _counts(c, seed=b)
    w = cu.class_balanced_weights(counts, 0.9999, dtype=torch.float64)
    cases = {
        "ce": (cu.CELoss(reduction=reduction)(z, y), R.cross_entropy(z, y, None, reduction)),
        "ce_drw": (cu.CEDRWLoss(counts, drw_epoch=0, reduction=reduction)(z, y),
                   R.cross_entropy(z, y, R.class_balanced_weights(counts.tolist(), 0.9999), reduction)),
        "ldam": (cu.LDAMLoss(counts, drw_epoch=None, reduction=reduction)(z / 4, y),
                 R.ldam_loss(z / 4, y, counts.tolist(), 0.5, 30.0, None, reduction)),
        "ldam_drw": (cu.ldam_loss(z / 4, y, cu.ldam_margins(counts, dtype=torch.float64), 30.0, w, reduction),
                     R.ldam_loss(z / 4, y, counts.tolist(), 0.5, 30.0, R.class_balanced_weights(counts.tolist(), 0.9999),
                                 reduction)),
        "bs": (cu.BalancedSoftmaxLoss(counts, reduction=reduction)(z, y),
               R.balanced_softmax_loss(z, y, counts.tolist(), reduction)),
    }
    for name, (fast, ref) in cases.items():
        assert fast.dtype == dtype, name
        assert_close(fast.double(), ref, dtype=dtype, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_definitions(dtype):
    b, c = 37, 8
    z0, y = _data(b, c, dtype, seed=3)
    counts = torch.tensor(COUNTS)
    w_ref = R.class_balanced_weights(COUNTS, 0.9999)
    pairs = {
        "ce_drw": (lambda z: cu.CEDRWLoss(counts, drw_epoch=0)(z, y), lambda z: R.cross_entropy(z, y, w_ref)),
        "ldam_drw": (lambda z: cu.LDAMLoss(counts, drw_epoch=0)(z, y), lambda z: R.ldam_loss(z, y, COUNTS, 0.5, 30.0, w_ref)),
        "bs": (lambda z: cu.BalancedSoftmaxLoss(counts)(z, y), lambda z: R.balanced_softmax_loss(z, y, COUNTS)),
    }
    for name, (fast, ref) in pairs.items():
        za = (z0 / 4).clone().requires_grad_(True)
        zb = (z0 / 4).double().clone().requires_grad_(True)
        fast(za).backward()
        ref(zb).backward()
        assert za.grad.dtype == dtype
        assert_close(za.grad.double(), zb.grad, kind="grad", dtype=dtype, msg=name)


def test_balanced_softmax_gradient_is_softmax_of_shifted_logits_minus_onehot():
    z, y = _data(19, 8, torch.float64, seed=5)
    z.requires_grad_(True)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    cu.BalancedSoftmaxLoss(counts)(z, y).backward()
    expected = (torch.softmax(z.detach() + torch.log(counts / counts.sum()), 1) - F.one_hot(y, 8)) / 19
    assert_close(z.grad, expected, kind="grad")


def test_ldam_gradient_at_target_is_scaled_softmax_minus_one():
    z, y = _data(11, 8, torch.float64, seed=6, scale=0.3)
    z.requires_grad_(True)
    m = cu.ldam_margins(COUNTS, 0.5, dtype=torch.float64)
    cu.ldam_loss(z, y, m, scale=30.0, reduction="sum").backward()
    shifted = z.detach() - F.one_hot(y, 8) * m[y].unsqueeze(1)
    expected = 30.0 * (torch.softmax(30.0 * shifted, 1) - F.one_hot(y, 8))
    assert_close(z.grad, expected, kind="grad")


def test_gradcheck_float64():
    z, y = _data(6, 5, torch.float64, seed=7, scale=0.5)
    counts = torch.tensor([50, 20, 9, 4, 2])
    for loss in (cu.CEDRWLoss(counts, drw_epoch=0), cu.LDAMLoss(counts, drw_epoch=0, scale=5.0),
                 cu.BalancedSoftmaxLoss(counts), cu.CELoss()):
        assert torch.autograd.gradcheck(lambda t, fn=loss: fn(t, y), (z.clone().requires_grad_(True),))


def test_noncontiguous_logits_give_the_same_loss():
    z, y = _data(17, 8, torch.float32, seed=8)
    zn = make_noncontiguous(z)
    assert not zn.is_contiguous()
    counts = torch.tensor(COUNTS)
    for loss in (cu.LDAMLoss(counts, drw_epoch=0), cu.BalancedSoftmaxLoss(counts), cu.CEDRWLoss(counts, drw_epoch=0)):
        assert_close(loss(zn, y), loss(z, y))


@given(b=st.integers(1, 40), c=st.integers(2, 30), seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_property_losses_finite_and_match(b, c, seed, scale):
    z, y = _data(b, c, torch.float64, seed=seed, scale=scale)
    counts = _counts(c, seed=seed)
    got = cu.LDAMLoss(counts, drw_epoch=0)(z, y)
    ref = R.ldam_loss(z, y, counts.tolist(), 0.5, 30.0, R.class_balanced_weights(counts.tolist(), 0.9999))
    assert torch.isfinite(got)
    assert_close(got, ref)
    assert_close(cu.BalancedSoftmaxLoss(counts)(z, y), R.balanced_softmax_loss(z, y, counts.tolist()))


# ----------------------------------------------------------------------------- DRW and the factory


def test_drw_switches_weights_at_drw_epoch():
    z, y = _data(64, 8, torch.float64, seed=9)
    counts = torch.tensor(COUNTS)
    loss = cu.CEDRWLoss(counts, drw_epoch=3)
    plain = F.cross_entropy(z, y)
    for epoch in range(3):
        loss.set_epoch(epoch)
        assert_close(loss(z, y), plain)
    loss.set_epoch(3)
    weighted = loss(z, y)
    assert_close(weighted, R.cross_entropy(z, y, R.class_balanced_weights(COUNTS, 0.9999)))
    assert not torch.allclose(weighted, plain)
    assert_close(loss(z, y, epoch=0), plain)  # the official call style overrides the stored epoch
    ldam = cu.LDAMLoss(counts, drw_epoch=3)
    assert ldam.weight_at(2) is None and ldam.weight_at(3) is ldam.class_weights


def test_make_loss_names():
    counts = COUNTS
    assert isinstance(cu.make_loss("ce"), cu.CELoss)
    assert isinstance(cu.make_loss("CE-DRW", counts), cu.CEDRWLoss)
    assert cu.make_loss("ldam", counts).drw_epoch is None
    assert cu.make_loss("ldam_drw", counts, drw_epoch=5).drw_epoch == 5
    assert isinstance(cu.make_loss("bs", counts), cu.BalancedSoftmaxLoss)
    with assert_raises(ValueError, "name"):
        cu.make_loss("focal", counts)
    with assert_raises(ValueError, "class_counts"):
        cu.make_loss("bs")


def test_normed_linear_gives_cosines():
    head = cu.NormedLinear(16, 5)
    x = torch.randn(9, 16)
    out = head(x)
    expected = F.normalize(x, dim=1) @ F.normalize(head.weight.detach(), dim=1).t()
    assert_close(out.detach(), expected)
    assert float(out.detach().abs().max()) <= 1.0 + 1e-6


def test_loss_errors_name_the_argument():
    z, y = _data(4, 8, torch.float32)
    with assert_raises(ValueError, "class_counts", "positive"):
        cu.BalancedSoftmaxLoss([10, 0, 3])
    with assert_raises(ValueError, "class_counts"):
        cu.class_balanced_weights(torch.ones(2, 2))
    with assert_raises(ValueError, "beta"):
        cu.class_balanced_weights(COUNTS, 1.0)
    with assert_raises(ValueError, "logits", "8"):
        cu.BalancedSoftmaxLoss(COUNTS[:5])(z, y)
    with assert_raises(ValueError, "target"):
        cu.CELoss()(z, y[:3])
    with assert_raises(ValueError, "target", "[0, 8)"):
        cu.LDAMLoss(COUNTS)(z, torch.tensor([0, 1, 8, 2]))
    with assert_raises(TypeError, "target"):
        cu.CELoss()(z, y.float())
    with assert_raises(TypeError, "logits"):
        cu.CELoss()(y, y)
    with assert_raises(ValueError, "reduction"):
        cu.CELoss(reduction="avg")
    with assert_raises(ValueError, "drw_epoch"):
        cu.CEDRWLoss(COUNTS, drw_epoch=-1)
    with assert_raises(ValueError, "scale"):
        cu.LDAMLoss(COUNTS, scale=0)
    with assert_raises(ValueError, "epoch"):
        cu.CELoss().set_epoch(-2)
    for name in ("ce", "ce_drw", "ldam", "ldam_drw", "bs"):  # a call's epoch is checked like set_epoch's
        with assert_raises(ValueError, "epoch", "-1"):
            cu.make_loss(name, COUNTS)(z, y, epoch=-1)
    with assert_raises(TypeError, "drw_epoch", "ldam_drw"):
        cu.make_loss("ldam", COUNTS, drw_epoch=3)
    with assert_raises(TypeError, "drw_epoch", "reduction"):  # names the argument and what the loss takes
        cu.make_loss("ce", COUNTS, drw_epoch=3)
    with assert_raises(TypeError, "margin"):
        cu.make_loss("bs", COUNTS, margin=0.5)
    with assert_raises(ValueError, "logits", "8"):  # "ce" takes the counts' number to check the width
        cu.make_loss("ce", COUNTS[:5])(z, y)
    with assert_raises(ValueError, "weight", "[C=8]"):
        cu.ldam_loss(z, y, cu.ldam_margins(COUNTS), weight=torch.ones(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ce", "ce_drw", "ldam_drw", "bs"])
def test_half_precision_logits_are_computed_in_float32(name, dtype):
    """Margins, scale and prior added in bfloat16 were off by up to 0.3 per sample; float16 sums
    of large losses overflowed. Half logits now give the float32 loss of the same values."""
    g = torch.Generator().manual_seed(3)
    z = (torch.rand(64, 8, generator=g) * 2 - 1).to(dtype)  # cosine-range logits, rounded to dtype
    y = torch.randint(0, 8, (64,), generator=g)
    for reduction in ("none", "sum"):
        loss = cu.make_loss(name, COUNTS, reduction=reduction)
        loss.set_epoch(200)  # re-weighted
        got = loss(z.clone().requires_grad_(), y)
        want = loss(z.float(), y)
        assert got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-5), float((got - want).abs().max())
    z_big = torch.full((512, 2), 3000.0, dtype=dtype)  # float16 sum of 512 losses of ~6.9 would be fine,
    z_big[:, 0] = 60000.0 if dtype == torch.float16 else 1e30  # but the gap makes each loss huge
    out = cu.make_loss(name, COUNTS[:2], reduction="sum")(z_big, torch.ones(512, dtype=torch.long))
    assert torch.isfinite(out)
    zg = z.clone().requires_grad_()
    cu.make_loss(name, COUNTS)(zg, y).backward()
    assert zg.grad.dtype == dtype and torch.isfinite(zg.grad.float()).all()


def test_functional_losses_take_python_lists():
    z, y = _data(4, 8, torch.float64)
    m = cu.ldam_margins(COUNTS, dtype=torch.float64)
    assert torch.equal(cu.ldam_loss(z, y, m.tolist()), cu.ldam_loss(z, y, m))
    lp = cu.log_prior(COUNTS, dtype=torch.float64)
    assert torch.equal(cu.balanced_softmax_loss(z, y, lp.tolist()), cu.balanced_softmax_loss(z, y, lp))


def test_class_balanced_weights_docstring_example():
    want = torch.tensor([0.0277, 0.2708, 2.7015])
    assert torch.allclose(cu.class_balanced_weights([500, 50, 5]), want, atol=5e-5)
    assert "0.0277, 0.2708, 2.7015" in cu.class_balanced_weights.__doc__


def test_docstring_examples_run():
    import doctest

    from fastorals.curriculum import losses

    res = doctest.testmod(losses, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 10 and res.failed == 0


def test_epoch_accepts_integer_like_values():
    np = pytest.importorskip("numpy")
    z, y = _data(4, 8, torch.float32)
    loss = cu.make_loss("ce_drw", COUNTS, drw_epoch=3)
    want = loss(z, y, epoch=3)
    for e in (np.int64(3), torch.tensor(3)):
        assert torch.equal(loss(z, y, epoch=e), want)
    for bad in (3.0, "3", True):
        with assert_raises(ValueError, "epoch"):
            loss(z, y, epoch=bad)
