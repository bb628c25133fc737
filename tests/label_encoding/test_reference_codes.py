"""The reference math on constructed cases, the fixed codes and their properties, decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fastorals.label_encoding import (
    LabelGrid,
    bcd_code,
    binary_code,
    bit_transitions,
    decode,
    johnson_code,
    make_code,
    min_hamming_distance,
    unary_code,
)
from fastorals.label_encoding import reference as R
from fastorals.testing import assert_close


def test_levels_and_grid():
    g = LabelGrid.make((-75, 75), 151)
    assert g.step == 1.0
    assert_close(g.levels(), torch.arange(-75, 76, dtype=torch.float32))
    assert g.nearest(torch.tensor([-75.0, -74.6, 0.49, 75.0])).tolist() == [0, 0, 75, 150]
    g2 = LabelGrid.make((0.0, 1.0), 5)
    assert g2.step == 0.25 and g2.nearest(torch.tensor([0.13, 0.12])).tolist() == [1, 0]


def test_soft_targets_peak_at_label_and_normalize():
    y = torch.tensor([3.0, 0.0, 9.0, 4.5], dtype=torch.float64)
    t = R.soft_targets(y, 0.0, 1.0, 10)
    assert_close(t.sum(1), torch.ones(4, dtype=torch.float64))
    assert t.argmax(1).tolist()[:3] == [3, 0, 9]
    assert t[3, 4] == pytest.approx(t[3, 5].item())  # halfway between two levels: a tie
    # explicit formula, temperature 2 with step 0.5 (target width in level steps)
    t2 = R.soft_targets(y, 0.0, 0.5, 19, temperature=2.0)
    lv = torch.arange(19, dtype=torch.float64) * 0.5
    w = torch.exp(-(y[:, None] - lv).abs() / 1.0)
    assert_close(t2, w / w.sum(1, keepdim=True))


def test_soft_target_ce_equals_torch_cross_entropy_with_probabilities():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    D = torch.rand(5, 13, generator=g, dtype=torch.float64)
    y = torch.rand(6, generator=g, dtype=torch.float64) * 12
    ce, pred = R.soft_target_ce(z, D, y, 0.0, 1.0)
    expected = torch.nn.functional.cross_entropy(z @ D, R.soft_targets(y, 0.0, 1.0, 13), reduction="none")
    assert_close(ce, expected)
    assert_close(pred, (torch.softmax(z @ D, 1) * torch.arange(13, dtype=torch.float64)).sum(1))


def test_r1_constructed_example():
    # two samples: labels 0 and 3 (margin 2 -> 6 code units needed), codes 1 apart in L1
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0.0, 3.0], dtype=torch.float64)
    # pairs (0,1) and (1,0): relu(6 - 1) = 5 each; mean over i of the sum over j: (5 + 5) / 2
    assert R.error_correction_penalty(z, y).item() == pytest.approx(5.0)
    # label step 0.5: labels are 6 steps apart -> relu(12 - 1) = 11
    assert R.error_correction_penalty(z, y, step=0.5).item() == pytest.approx(11.0)
    # codes far enough apart: zero
    assert R.error_correction_penalty(z * 10, y).item() == 0.0
    # equal labels never contribute, whatever the codes
    assert R.error_correction_penalty(torch.randn(5, 3, dtype=torch.float64), torch.ones(5, dtype=torch.float64)) == 0


def test_r1_uses_labels_not_batch_positions():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.rand(9, generator=g, dtype=torch.float64) * 20
    perm = torch.randperm(9, generator=g)
    # invariant to the order of the batch ...
    assert_close(R.error_correction_penalty(z[perm], y[perm]), R.error_correction_penalty(z, y))
    # ... and different from the (buggy) version that compares batch indices
    buggy = R.error_correction_penalty(z, torch.arange(9, dtype=torch.float64))
    assert abs(buggy.item() - R.error_correction_penalty(z, y).item()) > 1e-3


def test_r2_formula():
    D = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    # row 0: 1^2 + (3-1)^2 + (2-3)^2 + 2^2 = 10; row 1: 0 + 0 + 1 + 1 = 2
    assert R.bit_transition_penalty(D).item() == pytest.approx(12.0)
    g = torch.Generator().manual_seed(3)
    D = torch.randn(7, 11, generator=g, dtype=torch.float64)
    loops = sum(D[k, 0] ** 2 + D[k, -1] ** 2 + sum((D[k, q + 1] - D[k, q]) ** 2 for q in range(10)) for k in range(7))
    assert R.bit_transition_penalty(D).item() == pytest.approx(loops.item())


@pytest.mark.parametrize("Q", [2, 3, 7, 10, 64, 151])
def test_fixed_codes_properties(Q):
    u, j, b, n = unary_code(Q), johnson_code(Q), bcd_code(Q), binary_code(Q)
    assert u.shape == (Q, Q - 1) and j.shape == (Q, (Q + 1) // 2)
    assert b.shape == (Q, 4 * len(str(Q - 1))) and n.shape == (Q, max(1, math.ceil(math.log2(Q))))
    for c in (u, j, b, n):
        assert c.dtype == torch.uint8 and set(c.unique().tolist()) <= {0, 1}
        assert len({tuple(r) for r in c.tolist()}) == Q  # every level has its own code
        assert min_hamming_distance(c) >= 1
    # unary and Johnson: neighbouring levels differ in exactly one bit
    for c in (u, j):
        assert ((c[1:] != c[:-1]).sum(1) == 1).all()
    assert (bit_transitions(u) == 1).all()  # each unary bit flips once
    assert (bit_transitions(j) <= 2).all()
    # BCD decodes back to the level index
    digits = len(str(Q - 1))
    w = torch.tensor([10 ** (digits - 1 - d) * 2 ** (3 - b) for d in range(digits) for b in range(4)])
    assert ((b.long() * w).sum(1) == torch.arange(Q)).all()
    assert ((n.long() * (2 ** torch.arange(n.shape[1] - 1, -1, -1))).sum(1) == torch.arange(Q)).all()
    assert torch.equal(make_code("johnson", Q), j)


def test_johnson_small_exact():
    assert johnson_code(6).tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("name", ["unary", "johnson", "bcd", "binary"])
def test_decoding_on_constructed_codes(name):
    Q = 37
    bits = make_code(name, Q).to(torch.float64)
    D = (2 * bits - 1).T.contiguous()  # [M, Q] bipolar codes
    label_range = (-9.0, 9.0)
    lv = LabelGrid.make(label_range, Q).levels(torch.float64)
    # an output equal to (a scaled) code of level q decodes to l_q with both decoders
    for q in (0, 1, 17, Q - 2, Q - 1):
        z = 50.0 * D[:, q][None]
        assert decode(z, D, label_range, "argmax").item() == pytest.approx(lv[q].item())
        assert decode(z, D, label_range, "expected").item() == pytest.approx(lv[q].item(), abs=1e-6)
    # a flipped bit far from the level's transition is corrected by the unary code's redundancy
    if name == "unary":
        z = D[:, 20].clone()
        z[0] = -z[0]
        assert decode(10 * z[None], D, label_range, "argmax").item() == pytest.approx(lv[20].item())


def test_expected_decode_between_two_levels():
    D = torch.eye(4, dtype=torch.float64)
    z = torch.tensor([[-40.0, 20.0, 20.0, -40.0]], dtype=torch.float64)  # equal mass on levels 1 and 2
    assert decode(z, D, (0.0, 3.0)).item() == pytest.approx(1.5, abs=1e-6)


def test_reference_rlel_loss_terms_add_up():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, 6, generator=g, dtype=torch.float64)
    D = torch.rand(6, 21, generator=g, dtype=torch.float64)
    y = torch.rand(8, generator=g, dtype=torch.float64) * 20
    out = R.rlel_loss(z, D, y, 0.0, 1.0, alpha=0.3, beta=0.7)
    assert_close(out["loss"], out["ce"] + 0.3 * out["r1"] + 0.7 * out["r2"])


def test_codes_reject_bad_num_levels():
    for fn, bad in itertools.product((unary_code, johnson_code, bcd_code, binary_code), (1, 0, -3)):
        with pytest.raises(ValueError, match="num_levels"):
            fn(bad)
    with pytest.raises(TypeError, match="num_levels"):
        unary_code(2.5)
    with pytest.raises(ValueError, match="code"):
        make_code("gray", 5)
