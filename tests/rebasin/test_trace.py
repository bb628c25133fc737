"""The torch.fx tracer beyond fastorals.models: attention, grouped convs, concatenation, reshapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastorals.rebasin import check_spec, trace_permutation_spec


class MHABlock(nn.Module):
    """Pre-norm transformer block with nn.MultiheadAttention, over a token embedding."""

    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, d)
        self.pos = nn.Parameter(torch.randn(1, 5, d))
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(x.mean(1))


class QKVAttention(nn.Module):
    """Hand-written causal attention with separate q/k/v projections."""

    def __init__(self, d: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.h = heads
        self.inp = nn.Linear(4, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.out = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.h, d // self.h).transpose(1, 2)
        k = self.k(x).view(b, t, self.h, d // self.h).transpose(1, 2)
        v = self.v(x).view(b, t, self.h, d // self.h).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return self.out(x[:, -1])


def test_multihead_attention_block():
    net = MHABlock()
    spec = trace_permutation_spec(net, torch.randint(0, 11, (2, 5)))
    stream = spec.axes_to_perm["embed.weight"][1]
    assert isinstance(stream, str)  # the residual stream is permuted (not forced to identity)
    assert spec.axes_to_perm["pos"] == (None, None, stream)
    assert spec.axes_to_perm["ln1.weight"] == (stream,)
    assert spec.axes_to_perm["attn.out_proj.weight"][0] == stream
    rows = spec.axes_to_perm["attn.in_proj_weight"][0]  # (q|k|v, heads, head dims) factors
    assert isinstance(rows, tuple) and rows[0] == (None, 3) and rows[1][0] is not None and rows[2][0] is not None
    assert spec.axes_to_perm["attn.in_proj_weight"][1] == stream
    assert len(spec.perm_names) == 4  # stream, heads, head dims, MLP hidden


def test_qkv_attention_separates_heads_qk_and_v():
    net = QKVAttention()
    spec = trace_permutation_spec(net, torch.rand(2, 5, 4))
    q, k, v = (spec.axes_to_perm[f"{n}.weight"][0] for n in "qkv")
    assert q == k and q[0][0] == v[0][0] and q[1][0] != v[1][0]  # shared heads, separate qk / v dims
    assert spec.axes_to_perm["o.weight"][1] == v
    assert len(spec.perm_names) == 4


def test_grouped_depthwise_and_transposed_convs():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.grouped = nn.Conv2d(8, 12, 1, groups=4)
            self.gn = nn.GroupNorm(4, 12)
            self.up = nn.ConvTranspose2d(12, 6, 2, stride=2, groups=2)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            x = torch.relu(self.dw(x)) + x
            x = torch.relu(self.gn(self.grouped(x)))
            return self.head(torch.relu(self.up(x)))

    net, x = Net(), torch.rand(2, 3, 6, 6)
    spec = trace_permutation_spec(net, x)
    stem = spec.axes_to_perm["stem.weight"][0]
    assert stem is not None and spec.axes_to_perm["dw.weight"][0] == stem  # depthwise: the same channels
    # grouped convs split channels into (groups, channels per group) factors; the transposed
    # conv's 2 groups nest inside the 4 groups, so the group factor splits once more: (2, 2, 3)
    g = spec.axes_to_perm["grouped.weight"][0]
    assert isinstance(g, tuple) and [k for _, k in g] == [2, 2, 3] and all(p is not None for p, _ in g)
    assert spec.axes_to_perm["gn.weight"] == (g,) and spec.axes_to_perm["up.weight"][0] == g
    assert spec.axes_to_perm["head.weight"][0] is None


def test_concatenation_and_chunks():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 6), nn.Linear(5, 4)
            self.mix = nn.Linear(10, 8)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
            u, w = torch.relu(self.mix(h)).chunk(2, dim=1)
            return self.out(u * w)

    net, x = Net(), torch.rand(3, 5)
    spec = trace_permutation_spec(net, x)
    assert spec.axes_to_perm["mix.weight"][1] is None  # concatenated axis: never permuted (sound)
    assert check_spec(net, spec, x)


def test_trace_leaves_model_untouched():
    net = MHABlock().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trace_permutation_spec(net, torch.randint(0, 11, (2, 5)))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
