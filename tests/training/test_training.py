import math

import pytest
import torch
import torch.nn.functional as F

from fastorals import data, models, training
from fastorals.testing import assert_raises


def _toy(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randint(0, 160, (n, 1, 8, 8), generator=g)
    x[y == 1, :, :, :4] += 90  # class 1: bright left half, class 0: bright right half
    x[y == 0, :, :, 4:] += 90
    return x.to(torch.uint8), y


def _model():
    torch.manual_seed(0)
    return models.MLP(64, 2, hidden=(16,))


def test_fit_learns_and_records_history():
    x, y = _toy(256)
    ld = data.TensorLoader(x, y, batch_size=32, seed=0)
    hist = training.fit(_model(), ld, epochs=8, lr=0.05, test=data.TensorLoader(x, y, 64, shuffle=False),
                        progress=False, schedule="onecycle")
    assert len(hist.train_loss) == 8 and hist.epochs_run == 8
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert hist.test_acc[-1] > 0.8


def test_checkpoint_resume_is_exact(tmp_path):
    x, y = _toy()
    aug = lambda a, b: torch.flip(a, dims=[3]) if torch.rand(()) < 0.5 else a  # uses the global RNG
    full = _model()
    training.fit(full, data.TensorLoader(x, y, 16, seed=1), epochs=3, lr=0.05, augment=aug, progress=False)
    ck = str(tmp_path / "ck.pt")
    part = _model()

    def crash(epoch, model):  # the run is killed as epoch 2 starts
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.fit(part, data.TensorLoader(x, y, 16, seed=1), epochs=3, lr=0.05, augment=aug,
                     checkpoint=ck, progress=False, on_epoch_start=crash)
    assert training.load_checkpoint(ck)["history"]["epochs_run"] == 2
    torch.manual_seed(12345)  # a resumed process starts with a different RNG state
    resumed = _model()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # and different weights
    h = training.fit(resumed, data.TensorLoader(x, y, 16, seed=1), epochs=3, lr=0.05, augment=aug,
                     checkpoint=ck, progress=False)
    assert h.epochs_run == 3 and len(h.train_loss) == 3
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n
    st = training.load_checkpoint(ck)
    assert set(st) >= {"model", "optimizer", "schedule", "rng", "history", "loader"}


def test_checkpoint_loading_refuses_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        training.load_checkpoint(str(p))


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_raises_loss_and_stays_in_ball(norm, eps):
    torch.manual_seed(0)
    model = models.MLP(3 * 8 * 8, 4, hidden=(32,)).eval()
    x = torch.rand(16, 3, 8, 8)
    y = torch.randint(0, 4, (16,))
    adv = training.pgd_attack(model, x, y, eps=eps, steps=10, norm=norm)
    d = (adv - x).flatten(1)
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6
    else:
        assert d.norm(dim=1).max() <= eps + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 1e-3
    assert torch.equal(training.pgd_attack(model, x, y, eps=0.0, steps=3, random_start=False), x)


def test_adversarial_training_step_and_fit_adversarial():
    x, y = _toy(64)
    m = _model()
    opt = training.make_optimizer(m, "sgd", lr=0.05)
    loss, logits = training.adversarial_training_step(m, opt, x.float() / 255, y, eps=4 / 255, steps=3)
    assert math.isfinite(loss) and logits.shape == (64, 2)
    hist = training.fit(_model(), data.TensorLoader(x, y, 32), epochs=1, progress=False,
                        adversarial=training.AdversarialConfig(eps=4 / 255, alpha=1 / 255, steps=2))
    assert math.isfinite(hist.train_loss[0])
    ev = training.evaluate(m, data.TensorLoader(x, y, 32, shuffle=False),
                           attack=training.AdversarialConfig(eps=8 / 255, alpha=2 / 255, steps=3))
    clean = training.evaluate(m, data.TensorLoader(x, y, 32, shuffle=False))
    assert ev["acc"] <= clean["acc"] and ev["n"] == 64


def test_training_bad_args():
    x, y = _toy(8)
    m = _model()
    with assert_raises(ValueError, "norm"):
        training.pgd_attack(m, x.float(), y, eps=0.1, norm="l1")
    with assert_raises(TypeError, "x", "uint8"):
        training.pgd_attack(m, x, y, eps=0.1)
    with assert_raises(TypeError, "train", "TensorLoader"):
        training.fit(m, [(x, y)], epochs=1)
    with assert_raises(ValueError, "schedule"):
        training.fit(m, data.TensorLoader(x, y, 4), epochs=1, schedule="linear", progress=False)
    with assert_raises(ValueError, "optimizer"):
        training.make_optimizer(m, "rmsprop")
    with assert_raises(FloatingPointError, "loss"):
        training.fit(m, data.TensorLoader(x, y, 4), epochs=1, lr=1e30, progress=False,
                     loss_fn=lambda a, b: F.cross_entropy(a, b) * float("inf"))


def test_fit_tells_an_epoch_scheduled_loss_each_epoch(capsys):
    # DRW losses switch weights at drw_epoch: fit calls their set_epoch before each epoch, so a
    # DRW loss passed as loss_fn re-weights without any hook of the user's
    from fastorals import curriculum

    x, y = _toy()
    counts = torch.bincount(y, minlength=int(y.max()) + 1)
    seen = []
    loss = curriculum.make_loss("ce_drw", counts, drw_epoch=1)
    real = loss.forward
    loss.forward = lambda z, t, epoch=None: (seen.append((loss.epoch, loss.weight_at(loss.epoch) is not None)),
                                             real(z, t))[1]
    training.fit(_model(), data.TensorLoader(x, y, 48, seed=0), epochs=3, lr=0.05, loss_fn=loss, progress=False)
    assert loss.epoch == 2
    assert sorted(set(seen)) == [(0, False), (1, True), (2, True)]
    training.fit(_model(), data.TensorLoader(x, y, 48, seed=0), epochs=1, lr=0.05, progress="CE+CUDA")
    assert "CE+CUDA" in capsys.readouterr().err


def test_fit_leaves_other_epochs_alone():
    # only losses that follow fit's epoch (follows_fit_epoch) are told it: a DRW loss whose epoch
    # the user fixed keeps it, and an unrelated set_epoch is never called
    from fastorals import curriculum

    x, y = _toy()
    counts = torch.bincount(y, minlength=2)
    loss = curriculum.make_loss("ce_drw", counts, drw_epoch=1)
    loss.set_epoch(170)
    loss.follows_fit_epoch = False
    training.fit(_model(), data.TensorLoader(x, y, 48, seed=0), epochs=2, lr=0.05, loss_fn=loss, progress=False)
    assert loss.epoch == 170

    class Other:
        def set_epoch(self, epoch, total):  # another meaning, another signature
            raise AssertionError("called")

        def __call__(self, z, t):
            return F.cross_entropy(z, t)

    training.fit(_model(), data.TensorLoader(x, y, 48, seed=0), epochs=1, lr=0.05, loss_fn=Other(), progress=False)
