"""SLL layers: fastorals vs the paper's formulas (reference) vs ``torch.compile(reference)``.

Cases (CPU; CUDA rows when a GPU is present): the dense layer (batch 64 / 256, features 1024,
inner 2048) forward, backward, forward+backward and eval with the cached ``t``; the Gram row
sum alone; the SLL-S convolution (45 channels, 5 inner, 3x3, 32x32). The note of each
forward+backward case gives the saved-activation memory (tensors autograd keeps for the
backward, parameters excluded) of both paths.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from benchmarks.harness import Case, Suite
from fastorals.lipschitz import SLLConv2d, SLLLinear
from fastorals.lipschitz import reference as R


def saved_activation_bytes(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn`` runs (parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _grad_verify(fast_out: Any, other: Any, name: str) -> None:
    """Normwise relative error per gradient, at most 1e-2. The gradient of t = sum_j |G_ij| ... holds
    sign(G_ij), which is discontinuous: Gram entries near zero that two float32 summation orders
    round to opposite signs flip whole terms, so even two correct float32 paths differ by ~1e-3
    (1.01e-3 for W's gradient at B64 n1024 m2048 on an H200); a wrong formula gives O(1)."""
    for i, (a, b) in enumerate(zip(fast_out, other)):
        rel = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
        assert rel <= 1e-2, f"{name} disagrees with fastorals: gradient {i} relative error {rel:.2e}"


def _fast_backend(device: str) -> str:
    from fastorals.lipschitz.functional import _backend

    return _backend("lipschitz.sll_t", torch.device(device), dtype=torch.float32)


def _dense_cases(mode: str, device: str):
    sizes = {"smoke": [(16, 128, 256)], "quick": [(64, 1024, 2048)],
             "full": [(64, 1024, 2048), (256, 1024, 2048)]}[mode]
    for bsz, n, m in sizes:
        yield from _dense_size(mode, device, bsz, n, m)


def _dense_size(mode: str, device: str, bsz: int, n: int, m: int):
    torch.manual_seed(0)
    fb = _fast_backend(device)
    layer = SLLLinear(n, m).to(device)
    w, b, q = layer.weight, layer.bias, layer.q
    x = torch.randn(bsz, n, device=device, requires_grad=True)
    params = [w, b, q]
    shape = f"B{bsz} n{n} m{m}"
    gram_flops = 2.0 * m * m * n
    gemm_flops = 4.0 * bsz * m * n

    def fast_fwd():
        layer.train()  # each closure sets its mode: a runner may build every case before timing any
        return layer(x)

    def ref_fwd():
        return R.sll_dense(x, w, b, q)

    compiled = torch.compile(R.sll_dense) if mode != "smoke" else None
    skip = {"torch.compile(reference)": "compilation takes longer than a smoke run"} if mode == "smoke" else {}

    def fwdbwd(f):
        return lambda: torch.autograd.grad(f().sum(), [x, w, q])

    def no_grad(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    peers_fb = {"torch.compile(reference)": fwdbwd(lambda: compiled(x, w, b, q))} if compiled else {}
    mem_fast = saved_activation_bytes(fast_fwd, params) / 2**20
    mem_ref = saved_activation_bytes(ref_fwd, params) / 2**20
    note = f"saved activations: fastorals {mem_fast:.2f} MiB, reference {mem_ref:.2f} MiB"
    yield Case(op="sll_dense_fwd_bwd", shape=shape, dtype="float32", device=device,
               fast={"fastorals": fwdbwd(fast_fwd)}, reference=fwdbwd(ref_fwd), peers=peers_fb,
               backend=fb, flops=3 * (gram_flops + gemm_flops), verify=_grad_verify, skip=skip, note=note,
               name="dense fwd+bwd")
    peers_f = {"torch.compile(reference)": no_grad(lambda: compiled(x, w, b, q))} if compiled else {}
    yield Case(op="sll_dense_fwd", shape=shape, dtype="float32", device=device,
               fast={"fastorals": no_grad(fast_fwd)}, reference=no_grad(ref_fwd), peers=peers_f,
               backend=fb, flops=gram_flops + gemm_flops, skip=skip, name="dense fwd",
               verify=lambda a, o, name: torch.testing.assert_close(a, o, atol=1e-3, rtol=1e-3))
    g = torch.randn(bsz, n, device=device)
    y_fast = layer(x)
    y_ref = R.sll_dense(x, w, b, q)

    def bwd(y):
        return lambda: torch.autograd.grad(y, [x, w, q], g, retain_graph=True)

    yield Case(op="sll_dense_bwd", shape=shape, dtype="float32", device=device,
               fast={"fastorals": bwd(y_fast)}, reference=bwd(y_ref), backend=fb,
               flops=2 * (gram_flops + gemm_flops), verify=_grad_verify, name="dense bwd")
    layer.eval()
    layer(x)  # fill the cache

    def eval_cached():
        layer.eval()
        with torch.no_grad():
            return layer(x)

    def eval_recompute():
        with torch.no_grad():
            return R.sll_dense(x, w, b, q)

    yield Case(op="sll_dense_eval", shape=shape, dtype="float32", device=device,
               fast={"fastorals (cached t)": eval_cached}, reference=eval_recompute, backend=fb,
               flops=gemm_flops, name="dense eval (cached t)",
               verify=lambda a, o, name: torch.testing.assert_close(a, o, atol=1e-3, rtol=1e-3))

    def t_fast():
        layer.train()
        with torch.no_grad():
            return layer.compute_t()

    def t_ref():
        with torch.no_grad():
            return R.sll_dense_t(w, q)

    yield Case(op="sll_gram_t", shape=f"m{m} n{n}", dtype="float32", device=device,
               fast={"fastorals": t_fast}, reference=t_ref, backend=fb, flops=gram_flops,
               name="Gram row sum t", verify=lambda a, o, name: torch.testing.assert_close(a, o, rtol=1e-4,
                                                                                           atol=1e-4))


def _conv_cases(mode: str, device: str):
    sizes = {"smoke": [(4, 45, 5, 16)], "quick": [(64, 45, 5, 32)], "full": [(64, 45, 5, 32), (256, 45, 5, 32)]}[mode]
    for bsz, c, m, hw in sizes:
        yield from _conv_size(mode, device, bsz, c, m, hw)


def _conv_size(mode: str, device: str, bsz: int, c: int, m: int, hw: int):
    torch.manual_seed(0)
    layer = SLLConv2d(c, m, 3).to(device)
    w, b, q = layer.weight, layer.bias, layer.q
    x = torch.randn(bsz, c, hw, hw, device=device, requires_grad=True)
    shape = f"B{bsz} c{c} m{m} {hw}x{hw} k3"
    flops = 2.0 * 2 * bsz * hw * hw * m * c * 9

    def fast():
        layer.train()  # each closure sets its mode: a runner may build every case before timing any
        return torch.autograd.grad(layer(x).sum(), [x, w, q])

    def ref():
        return torch.autograd.grad(R.sll_conv(x, w, b, q).sum(), [x, w, q])

    mem_fast = saved_activation_bytes(lambda: layer(x), [w, b, q]) / 2**20
    mem_ref = saved_activation_bytes(lambda: R.sll_conv(x, w, b, q), [w, b, q]) / 2**20
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    peers = {"reference (channels_last input)": lambda: torch.autograd.grad(R.sll_conv(xcl, w, b, q).sum(),
                                                                            [xcl, w, q])}
    skip = {}
    if mode != "smoke":
        compiled = torch.compile(R.sll_conv)
        peers["torch.compile(reference)"] = lambda: torch.autograd.grad(compiled(x, w, b, q).sum(), [x, w, q])
    yield Case(op="sll_conv_fwd_bwd", shape=shape, dtype="float32", device=device, fast={"fastorals": fast},
               reference=ref, peers=peers, backend="torch", flops=3 * flops, verify=_grad_verify, skip=skip,
               note=f"saved activations: fastorals {mem_fast:.2f} MiB, reference {mem_ref:.2f} MiB",
               name="conv fwd+bwd")
    layer.eval()
    layer(x)

    def eval_cached():
        layer.eval()
        with torch.no_grad():
            return layer(x)

    def eval_recompute():
        with torch.no_grad():
            return R.sll_conv(x, w, b, q)

    yield Case(op="sll_conv_eval", shape=shape, dtype="float32", device=device,
               fast={"fastorals (cached t)": eval_cached}, reference=eval_recompute, backend="torch",
               flops=flops, name="conv eval (cached t)",
               verify=lambda a, o, name: torch.testing.assert_close(a, o, atol=1e-3, rtol=1e-3))


def cases(mode: str, device: str):
    if device not in ("cpu", "cuda"):
        return
    yield from _dense_cases(mode, device)
    if device == "cpu":
        yield from _conv_cases(mode, device)


SUITE = Suite("lipschitz", cases, "SLL dense/conv layers: fwd, bwd, fwd+bwd, eval cache; vs reference and compile")
