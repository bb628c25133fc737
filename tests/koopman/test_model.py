"""SKD model, training helper, judge and metrics."""

from __future__ import annotations

import math

import pytest
import torch

import fastorals
from fastorals.koopman import (
    SpriteJudge,
    StructuredKoopmanAE,
    koopman_decompose,
    prediction_metrics,
    sprites,
    train_skd,
)
from fastorals.koopman.judge import _augment, judge_scores, targets_of, train_judge
from fastorals.testing import assert_close, assert_raises


@pytest.mark.parametrize(("size", "n_conv"), [(32, 3), (64, 4), ((16, 32), 2)])
def test_shapes_and_architecture(size, n_conv):
    model = StructuredKoopmanAE(frame_size=size, k=12, hidden=20, conv_dim=4, num_static=3)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(3, 5, 3, h, w)
    out = model(x)
    assert out.x_rec.shape == x.shape and out.x_pred.shape == x.shape
    assert out.z.shape == (3, 5, 12) and out.z_pred.shape == (3, 5, 12) and out.C.shape == (12, 12)
    assert out.eigvals.shape == (12,) and out.eigvals.is_complex()
    convs = [m for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == n_conv + 1 and [c.stride for c in convs[:-1]] == [(2, 2)] * n_conv
    assert model.decoder.lstm.hidden_size == 20 and model.encoder.lstm.hidden_size == 12
    assert float(out.x_rec.min()) >= 0 and float(out.x_rec.max()) <= 1
    assert "k=12" in repr(model)


def test_paper_architecture_widths():
    model = StructuredKoopmanAE()  # 64x64, k 40, hidden 80, conv 32
    widths = [m.out_channels for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)]
    assert widths == [32, 64, 128, 256, 40]
    dec = [m.out_channels for m in model.decoder.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    assert dec == [256, 128, 64, 32, 3]
    assert (model.w_rec, model.w_pred, model.w_eig, model.num_static) == (15.0, 1.0, 1.0, 7)
    assert (model.static_mode, model.dynamic_mode) == ("ball", "real")
    assert model.drop.p == 0.2


def test_loss_terms_and_backward():
    torch.manual_seed(0)
    model = StructuredKoopmanAE(frame_size=16, k=8, hidden=10, conv_dim=4, num_static=2)
    x = torch.rand(6, 4, 3, 16, 16)
    out = model(x)
    terms = model.loss(x, out)
    expected = (15 * terms.reconstruction + terms.prediction_ambient + terms.prediction_latent
                + terms.eig_static + terms.eig_dynamic)
    assert_close(terms.total, expected)
    assert_close(terms.prediction_latent, (out.z - out.z_pred).square().mean())
    terms.total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert int(terms.num_static_eigvals) >= 2
    d = terms.as_dict()
    assert set(d) >= {"total", "reconstruction", "eig_static", "eig_dynamic"}


def test_dropout_only_on_reconstruction_path():
    torch.manual_seed(0)
    model = StructuredKoopmanAE(frame_size=16, k=8, hidden=10, conv_dim=4, num_static=2, dropout=0.5)
    x = torch.rand(4, 4, 3, 16, 16)
    out = model(x)
    # the Koopman prediction uses the undropped latents: frame 0 equals z exactly
    assert torch.equal(out.z_pred[:, 0], out.z[:, 0])
    model.eval()
    out_e = model(x)
    assert_close(out_e.x_rec, model.decode(out_e.z))


def test_variant_released_and_overrides():
    m = StructuredKoopmanAE(frame_size=16, k=8, hidden=8, conv_dim=4, num_static=2, variant="released")
    assert (m.static_mode, m.dynamic_mode) == ("norm", "ball")
    m2 = StructuredKoopmanAE(frame_size=16, k=8, hidden=8, conv_dim=4, num_static=2, dynamic_mode="none")
    assert m2.dynamic_mode == "none"


def test_train_skd_decreases_loss_and_swap_roundtrip():
    torch.manual_seed(0)
    train, _ = sprites.sprite_splits(200, size=16, seed=0)
    model = StructuredKoopmanAE(frame_size=16, k=10, hidden=16, conv_dim=8, num_static=3)
    g = torch.Generator().manual_seed(0)
    hist = train_skd(model, lambda: (x for x, _ in train.batches(16, generator=g)), epochs=1, max_steps=25,
                     log_every=5)
    assert hist[0]["step"] == 1 and hist[-1]["step"] == 25
    first = hist[0]["reconstruction"]
    last = min(h["reconstruction"] for h in hist[-2:])
    assert last < first
    model.eval()
    x = train.images(torch.arange(8))
    dec = model.decompose(train.images(torch.arange(64)))
    assert dec.k == 10 and int(dec.static_mask.sum()) >= 3
    # swapping nothing (x with itself) reproduces the reconstruction
    out = model.swap(x, x, dec, "static")
    assert_close(out, model.decode(model.encode(x)), atol=1e-4, rtol=1e-3)
    assert model.swap(x, x.flip(0), dec, "dynamic").shape == x.shape


def test_model_errors():
    with assert_raises(ValueError, "frame_size"):
        StructuredKoopmanAE(frame_size=4)
    with assert_raises(ValueError, "frame_size", "divisible"):
        StructuredKoopmanAE(frame_size=(16, 18))
    with assert_raises(ValueError, "num_static"):
        StructuredKoopmanAE(frame_size=16, k=4, num_static=5)
    with assert_raises(ValueError, "dropout"):
        StructuredKoopmanAE(frame_size=16, dropout=1.0)
    with assert_raises(ValueError, "variant"):
        StructuredKoopmanAE(frame_size=16, variant="mine")
    with assert_raises(ValueError, "k", ">= 1"):
        StructuredKoopmanAE(frame_size=16, k=0)
    m = StructuredKoopmanAE(frame_size=16, k=6, hidden=8, conv_dim=4, num_static=2)
    with assert_raises(ValueError, "x", "(b, t, 3, 16, 16)"):
        m(torch.rand(2, 4, 3, 32, 32))
    with assert_raises(ValueError, "x", "t >= 2"):
        m(torch.rand(2, 1, 3, 16, 16))
    with assert_raises(TypeError, "x", "floating"):
        m(torch.randint(0, 255, (2, 4, 3, 16, 16), dtype=torch.uint8))
    with assert_raises(ValueError, "z", "k mismatch"):
        m.decode(torch.rand(2, 4, 7))
    m.eval()
    with torch.no_grad():
        z = m.encode(torch.rand(3, 4, 3, 16, 16))
    dec = koopman_decompose(torch.eye(6) * 0.5, 2)
    with assert_raises(ValueError, "z", "k mismatch"):
        from fastorals.koopman import swap

        swap(z[..., :5], z[..., :5], dec)


def test_backend_torch_without_extension_path():
    model = StructuredKoopmanAE(frame_size=16, k=6, hidden=8, conv_dim=4, num_static=2)
    x = torch.rand(3, 4, 3, 16, 16)
    torch.manual_seed(1)
    with fastorals.use_backend("torch"):
        a = model.loss(x, model(x)).total
    torch.manual_seed(1)
    with fastorals.use_backend("reference"):
        b = model.loss(x, model(x)).total
    assert_close(a, b, atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------ judge, metrics


def test_prediction_metrics_known_values():
    k = 9
    uniform = torch.full((50, k), 1.0 / k)
    m = prediction_metrics(uniform)
    assert m["IS"] == pytest.approx(1.0) and m["H_y"] == pytest.approx(math.log(k))
    assert m["H_y_given_x"] == pytest.approx(math.log(k))
    onehot = torch.eye(k).repeat(4, 1)
    m2 = prediction_metrics(onehot, torch.arange(k).repeat(4))
    assert m2["IS"] == pytest.approx(k, rel=1e-6) and m2["H_y_given_x"] == pytest.approx(0, abs=1e-6)
    assert m2["H_y"] == pytest.approx(math.log(k)) and m2["acc"] == 1.0
    with assert_raises(ValueError, "probs"):
        prediction_metrics(torch.rand(3))


def test_judge_shapes_training_and_scores():
    train, test = sprites.sprite_splits(300, size=16, seed=1)
    seen = []
    judge = train_judge(train, steps=3, batch_size=8, width=4, seed=0, log_every=2,
                        log=lambda step, loss, t: seen.append((step, math.isfinite(loss), t >= 0)))
    assert seen == [(2, True, True), (3, True, True)]  # every log_every steps and after the last
    x = test.images(torch.arange(6))
    logits = judge(x)
    assert {h: tuple(v.shape) for h, v in logits.items()} == {
        "skin": (6, 6), "hair": (6, 6), "top": (6, 6), "bottom": (6, 6), "motion": (6, 9)}
    scores = judge_scores(judge, x, targets_of(test.labels[:6]))
    assert set(scores["motion"]) == {"acc", "IS", "H_y_given_x", "H_y"}
    with assert_raises(ValueError, "x"):
        SpriteJudge(16)(torch.rand(2, 3, 3, 16, 16))
    with assert_raises(ValueError, "frame_size"):
        SpriteJudge(24)
    with assert_raises(ValueError, "steps"):
        train_judge(train, steps=0)
    with assert_raises(ValueError, "log_every"):
        train_judge(train, steps=2, log_every=0)


def test_augment_keeps_range():
    x = sprites.render(sprites.all_labels()[:4], size=16)
    y = _augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_nan_frames_are_refused_before_the_encoder_and_defective_c_is_named():
    torch.manual_seed(0)
    m = StructuredKoopmanAE(k=6, hidden=16, num_static=2, frame_size=(8, 8)).train()
    x = torch.rand(2, 3, 3, 8, 8)
    bad = x.clone()
    bad[0, 1, 0, 0, 0] = float("nan")
    with assert_raises(ValueError, "x", "NaN"):
        m(bad)
    assert all(torch.isfinite(b).all() for b in m.buffers() if b.is_floating_point())  # BatchNorm untouched
    m.eval()
    m(x)  # clean frames still work
    with assert_raises(ValueError, "C", "defective"):
        koopman_decompose(torch.diag(torch.ones(2), 1), 1)  # a Jordan block: one eigenvector


def test_complex_half_eigenvalues_are_computed_in_complex64():
    from fastorals.koopman import eigenvalue_loss

    g = torch.Generator().manual_seed(0)
    C = torch.randn(6, 6, generator=g)
    ev = torch.linalg.eigvals(C)
    want = eigenvalue_loss(ev.to(torch.complex32).to(torch.complex64), 2)
    for backend in ("cpp", "torch", "reference"):
        with fastorals.use_backend(backend):
            got = eigenvalue_loss(ev.to(torch.complex32), 2)
        assert torch.allclose(got, want, atol=1e-5), (backend, float(got), float(want))
    with assert_raises(ValueError, "dynamic_threshold", "finite"):
        eigenvalue_loss(ev, 2, dynamic_threshold=float("inf"))


def test_train_skd_arguments():
    m = StructuredKoopmanAE(k=6, hidden=16, num_static=2, frame_size=(8, 8))
    before = [p.detach().clone() for p in m.parameters()]
    batches = lambda: iter([torch.rand(2, 3, 3, 8, 8)])
    assert train_skd(m, batches, max_steps=0) == []
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # no step taken
    with assert_raises(TypeError, "batches", "callable"):
        train_skd(m, [torch.rand(2, 3, 3, 8, 8)])
    with assert_raises(ValueError, "max_steps"):
        train_skd(m, batches, max_steps=-1)
