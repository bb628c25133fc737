import pytest
import torch

from fastorals import models
from fastorals.onepixel import (
    ShortcutDataset,
    ShortcutPattern,
    ShortcutTransform,
    apply_shortcut,
    error_minimizing_noise,
    ops_plus_em,
    search_shortcut,
)
from fastorals.testing import assert_raises


def _xy(n=12, k=3, c=3, h=4, w=4):
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)
    y = torch.arange(n) % k
    return x, y


def test_bad_inputs_raise_clear_errors():
    x, y = _xy()
    with assert_raises(ValueError, "labels", "num_classes"):
        search_shortcut(x, y, num_classes=2)
    with assert_raises(ValueError, "labels", "num_classes=3", "[-1, 1]"):
        search_shortcut(x, y - 1, num_classes=3)
    with assert_raises(ValueError, "labels", "shape [12]"):
        search_shortcut(x, y[:5])
    with assert_raises(TypeError, "labels", "integer"):
        search_shortcut(x, y.float())
    with assert_raises(TypeError, "images", "uint8"):
        search_shortcut(x.to(torch.int16), y)
    with assert_raises(ValueError, "images", "4 dimensions"):
        search_shortcut(x[0], y)
    with assert_raises(ValueError, "images", "[0, 1]"):
        search_shortcut(x.float(), y)  # 0..255 floats
    with assert_raises(ValueError, "images", "[0, 1]"):
        search_shortcut(x.float() / 255 - 0.5, y)
    bad = x.float() / 255
    bad[3, 1, 2, 2] = float("nan")
    with assert_raises(ValueError, "images", "nan"):
        search_shortcut(bad, y)
    bad[3, 1, 2, 2] = float("inf")
    with assert_raises(ValueError, "images", "inf"):
        search_shortcut(bad, y)
    with assert_raises(ValueError, "class", "no images"):
        search_shortcut(x, y, num_classes=5)
    with assert_raises(ValueError, "sparsity"):
        search_shortcut(x, y, sparsity=0)
    with assert_raises(ValueError, "sparsity"):
        search_shortcut(x, y, sparsity=17)
    with assert_raises(ValueError, "channels"):
        search_shortcut(torch.zeros(2, 13, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]))
    with assert_raises(ValueError, "num_classes"):
        search_shortcut(x, y, num_classes=0)
    with assert_raises(ValueError, "non-empty"):
        search_shortcut(x[:0], y[:0])
    with assert_raises(ValueError, "sparsity", "no free"):
        search_shortcut(torch.zeros(3, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 1, 2]))


def test_apply_errors():
    x, y = _xy()
    pat = search_shortcut(x, y)
    with assert_raises(ValueError, "images", "match the pattern"):
        apply_shortcut(x[:, :, :3], y, pat)
    with assert_raises(ValueError, "labels", "pattern"):
        apply_shortcut(x, y + 1, pat)
    with assert_raises(TypeError, "pattern"):
        apply_shortcut(x, y, {"positions": []})
    bad = ShortcutPattern(pat.positions + 10, pat.colors, pat.scores, pat.image_shape)
    with assert_raises(ValueError, "positions"):
        ShortcutTransform(bad)


def test_wrappers_apply_on_the_fly():
    x, y = _xy()
    pat = search_shortcut(x, y)
    want = apply_shortcut(x, y, pat)
    assert torch.equal(ShortcutTransform(pat)(x, y), want)
    base = list(zip(x, y.tolist()))
    ds = ShortcutDataset(base, pat, transform=lambda im: im.flip(-1))
    img, label = ds[5]
    assert label == int(y[5]) and torch.equal(img, want[5].flip(-1))
    assert len(ds) == 12 and torch.equal(base[5][0], x[5])  # the wrapped data is untouched


def _tiny_task(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 4
    return x, y


def test_error_minimizing_noise_minimizes_loss_within_eps():
    import torch.nn.functional as F

    x, y = _tiny_task()
    torch.manual_seed(0)
    model = models.MLP(3 * 8 * 8, 4, hidden=(32,))
    eps = 8 / 255
    noise = error_minimizing_noise(model, x, y, eps=eps, pgd_steps=5, train_steps=5, batch_size=32, max_rounds=4,
                                   progress=False)
    assert noise.shape == x.shape and noise.abs().max() <= eps + 1e-6
    xf = x.float() / 255
    assert ((xf + noise) >= -1e-6).all() and ((xf + noise) <= 1 + 1e-6).all()
    model.eval()
    with torch.no_grad():
        rand = (torch.rand(x.shape) * 2 - 1) * eps
        loss_em = F.cross_entropy(model((xf + noise).clamp(0, 1)), y)
        loss_rand = F.cross_entropy(model((xf + rand).clamp(0, 1)), y)
    assert loss_em < loss_rand  # the noise MINIMIZES the loss
    cw = error_minimizing_noise(models.MLP(192, 4, hidden=(16,)), x, y, eps=eps, pgd_steps=2, train_steps=2,
                                max_rounds=1, sample_wise=False, progress=False)
    assert torch.equal(cw[0], cw[4]) and cw.abs().max() <= eps + 1e-6  # class-wise: same noise per class


def test_ops_plus_em_construction():
    x, y = _tiny_task(32)
    noise = (torch.rand(x.shape) * 2 - 1) * (8 / 255)
    out, pat = ops_plus_em(x, y, noise)
    assert out.dtype == torch.uint8 and pat.num_classes == 4
    em = ((x.float() / 255 + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    diff = (out.int() - em.int()).abs()
    mask = torch.ones_like(diff, dtype=torch.bool)
    for n in range(32):
        r, c = pat.positions[y[n], 0].tolist()
        mask[n, :, r, c] = False
    assert diff[mask].max() == 0  # everything but the shortcut pixel is the EM image
    with assert_raises(ValueError, "noise"):
        ops_plus_em(x, y, noise[:3])


def test_noise_bad_args():
    x, y = _tiny_task(8)
    m = models.MLP(192, 4, hidden=(8,))
    with assert_raises(ValueError, "eps"):
        error_minimizing_noise(m, x, y, eps=0)
    with assert_raises(ValueError, "labels"):
        error_minimizing_noise(m, x, y[:3])
    with assert_raises(ValueError, "stop_accuracy"):
        error_minimizing_noise(m, x, y, stop_accuracy=1.5)
    with assert_raises(ValueError, "images", "[0, 1]", "255"):  # float data in [0, 255] would be clamped to 0/1
        error_minimizing_noise(m, x.float(), y)
    with assert_raises(ValueError, "labels", "num_classes=2"):
        error_minimizing_noise(m, x, y, num_classes=2, sample_wise=False)
    with assert_raises(TypeError, "labels"):
        error_minimizing_noise(m, x, y.tolist())
    with assert_raises(ValueError, "images", "at least one"):
        error_minimizing_noise(m, x[:0], y[:0])


@pytest.mark.interpret
def test_triton_scores_and_search_equal_reference(triton_device):
    import fastorals
    from fastorals.onepixel import ops
    from fastorals.onepixel.triton import class_sums_triton

    for dtype in (torch.uint8, torch.float32):
        for (n, c, h, w, k) in [(30, 3, 4, 5, 3), (9, 1, 3, 3, 2), (17, 4, 2, 3, 4)]:
            g = torch.Generator().manual_seed(n)
            x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
            y = torch.arange(n) % k
            xin = x if dtype == torch.uint8 else x.float() / 255
            counts = torch.bincount(y, minlength=k)
            s1, s2, _ = ops.class_sums_torch(xin, y, k)
            t1, t2 = class_sums_triton(xin.to(triton_device), y.to(triton_device), counts.to(triton_device), k,
                                       int(counts.max()))
            assert torch.equal(t1.cpu(), s1) and torch.equal(t2.cpu(), s2)  # exact integer sums
            with fastorals.use_backend("reference"):
                ref = search_shortcut(xin, y)
            with fastorals.use_backend("triton"):
                fast = search_shortcut(xin.to(triton_device), y.to(triton_device))
            assert torch.equal(fast.positions, ref.positions) and torch.equal(fast.colors, ref.colors)


def test_tampered_pattern_files_name_the_field(tmp_path):
    import json

    x, y = _tiny_task(16)
    good = search_shortcut(x, y).to_dict()
    for change, words in ((lambda d: d["positions"][0][0].__setitem__(0, 1.7), ("positions", "integers")),
                          (lambda d: d["colors"][0][0].__setitem__(0, 256), ("colors", "range")),
                          (lambda d: d.__setitem__("image_shape", [3, 8]), ("image_shape",)),
                          (lambda d: d.pop("scores"), ("missing", "scores"))):
        d = json.loads(json.dumps(good))
        change(d)
        p = tmp_path / "p.json"
        p.write_text(json.dumps(d))
        with assert_raises(ValueError, "pattern", *words):
            ShortcutPattern.load(p)
    # the untouched document still loads
    p.write_text(json.dumps(good))
    assert torch.equal(ShortcutPattern.load(p).positions, search_shortcut(x, y).positions)
