"""The fast SSD scan against transformers' own, and its dispatcher: only inside ``fast_scan`` blocks, only this thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from overflow_core.backends import ssd


def test_chunk_scan_equals_transformers_scan() -> None:
    """Outputs and final states equal transformers' ``mamba2_chunk_scan`` for one and several groups, lengths that are
    and are not a whole number of chunks, with and without an initial state. Tolerance: float32 sums of up to 150
    products in another order, about 1e-5 of the values' scale; a wrong decay or a dropped initial state is O(1)."""
    from transformers.models.mamba2 import modeling_mamba2

    original = getattr(modeling_mamba2.mamba2_chunk_scan, "__wrapped__", modeling_mamba2.mamba2_chunk_scan)
    torch.manual_seed(0)
    for b, length, h, p, g, n, q, init in [
        (2, 150, 4, 8, 1, 16, 32, False),
        (2, 64, 4, 8, 2, 16, 32, True),
        (3, 100, 6, 4, 3, 8, 16, True),
        (1, 5, 2, 4, 1, 4, 8, False),
        (2, 45, 4, 8, 1, 16, 64, True),  # blocks of 48, not the model's 64 (ssd.block_length)
        (2, 100, 4, 8, 2, 16, 256, True),  # blocks of 128
    ]:
        x, dt = torch.randn(b, length, h, p), torch.randn(b, length, h)
        a, d, bias = -torch.rand(h), torch.randn(h), torch.randn(h)
        bm, cm = torch.randn(b, length, g, n), torch.randn(b, length, g, n)
        s0 = torch.randn(b, h, p, n) if init else None
        kw = dict(D=d, dt_bias=bias, initial_states=s0, dt_softplus=True, return_final_states=True)
        y1, s1 = original(x, dt, a, bm, cm, q, **kw)
        y2, s2 = ssd.chunk_scan(x, dt, a, bm, cm, q, **kw)
        torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s2, s1, rtol=1e-4, atol=1e-4)
        if init:  # the initial state matters far above the tolerance, so dropping it would fail the check above
            y0 = ssd.chunk_scan(x, dt, a, bm, cm, q, **{**kw, "initial_states": None})[0]
            assert (y0 - y2).abs().max() > 1e-1



def test_state_step_equals_transformers_step() -> None:
    """One recurrent step: the output and the state written in place equal transformers' for one and two groups, with
    and without D, dt_bias, softplus and the z gate, given per-head values expanded as the mixers pass them. A dropped
    decay or input term moves the state by O(1)."""
    from transformers.models.mamba2 import modeling_mamba2

    name = "mamba2_selective_state_update"
    original = getattr(getattr(modeling_mamba2, name), "__wrapped__", getattr(modeling_mamba2, name))
    torch.manual_seed(3)
    for b, h, p, g, n, extras in [(3, 4, 8, 1, 16, True), (2, 6, 4, 2, 8, False), (1, 2, 4, 1, 4, True)]:
        x, dt = torch.randn(b, h, p), torch.randn(b, 1, h).transpose(1, 2).expand(-1, -1, p)
        a = (-torch.rand(h))[:, None, None].expand(-1, p, n)
        bm, cm, s0 = torch.randn(b, g, n), torch.randn(b, g, n), torch.randn(b, h, p, n)
        kw: dict[str, Any] = {"dt_softplus": extras}
        if extras:
            kw |= {"D": torch.randn(h)[:, None].expand(-1, p), "dt_bias": torch.randn(h)[:, None].expand(-1, p)}
            kw["z"] = torch.randn(b, h, p)
        assert ssd._step_is_mine(s0, x, dt, a, bm, cm, **kw)
        theirs, mine = s0.clone(), s0.clone()
        y1 = original(theirs, x, dt, a, bm, cm, **kw)
        y2 = ssd.state_step(mine, x, dt, a, bm, cm, **kw)
        torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        assert (mine - s0).abs().max() > 1e-1
    full_dt = torch.randn(1, 2, 4)  # a dt that differs along p is not per head: transformers' step keeps it
    assert not ssd._step_is_mine(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4), full_dt, a[:2, :4, :4], bm, cm)


def test_block_length_pads_least_and_prefers_long_blocks() -> None:
    assert [ssd.block_length(n, 64) for n in (45, 64, 268, 300, 16384)] == [48, 64, 48, 64, 64]
    assert [ssd.block_length(n, 256) for n in (45, 100, 268, 16384)] == [48, 128, 48, 256]
    assert ssd.block_length(5, 8) == 8


def test_chunk_scan_gradients_equal_transformers_scan() -> None:
    """Training runs chunk_scan with gradients (``training/ssd.py``): the gradients of every input equal those of
    transformers' scan. With grad enabled the scan takes its out-of-place branch; a wrong one (or an in-place step that
    autograd refuses) fails here."""
    from transformers.models.mamba2 import modeling_mamba2

    original = getattr(modeling_mamba2.mamba2_chunk_scan, "__wrapped__", modeling_mamba2.mamba2_chunk_scan)
    torch.manual_seed(1)
    b, length, h, p, g, n, q = 2, 70, 4, 8, 2, 8, 32
    inputs = [torch.randn(b, length, h, p), torch.randn(b, length, h), -torch.rand(h)]
    inputs += [torch.randn(b, length, g, n), torch.randn(b, length, g, n), torch.randn(b, h, p, n)]
    grads = []
    for scan in (original, ssd.chunk_scan):
        leaves = [t.clone().requires_grad_() for t in inputs]
        x, dt, a, bm, cm, s0 = leaves
        y, s = scan(x, dt, a, bm, cm, q, D=None, initial_states=s0, dt_softplus=True, return_final_states=True)
        (y.square().sum() + s.square().sum()).backward()
        grads.append([t.grad for t in leaves])
    for mine, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-3)
        assert theirs.abs().max() > 1e-1, "every input's gradient is far above the tolerance"


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_causal_conv1d_equals_transformers_conv(layout: str) -> None:
    """The depthwise causal convolution equals transformers' ``causal_conv1d_fn`` for both memory layouts the mixers
    pass, 2 and 4 taps, sequences shorter than the kernel, with and without bias and activation; gradients too.
    Dropping a tap or shifting it by one position changes the output by O(1)."""
    from transformers.models.mamba2 import modeling_mamba2

    original = getattr(modeling_mamba2.causal_conv1d_fn, "__wrapped__", modeling_mamba2.causal_conv1d_fn)
    torch.manual_seed(2)
    for b, c, length, k, bias, act in [(2, 12, 50, 4, True, "silu"), (3, 6, 2, 4, False, None), (1, 5, 9, 2, True, None)]:
        base = torch.randn(b, length, c).transpose(1, 2) if layout == "channels_last" else torch.randn(b, c, length)
        w, bvec = torch.randn(c, k), (torch.randn(c) if bias else None)
        expected = original(base, w, bvec, activation=act)
        with torch.inference_mode():
            got = ssd.causal_conv1d(base, w, bvec, activation=act)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        shifted = ssd.causal_conv1d(base, w.roll(1, -1), bvec, activation=act)
        assert (shifted - expected).abs().max() > 1e-1
        leaves = [base.detach().clone().requires_grad_(), w.clone().requires_grad_()]
        grads = []
        for conv in (original, ssd.causal_conv1d):
            for leaf in leaves:
                leaf.grad = None
            conv(leaves[0], leaves[1], bvec, activation=act).square().sum().backward()
            grads.append([t.grad.clone() for t in leaves])  # type: ignore[union-attr]
        for mine, theirs in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)

def _tiny_mamba2() -> torch.nn.Module:
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=64, hidden_size=32, state_size=8, num_heads=4, head_dim=16, n_groups=1, num_hidden_layers=2,
        chunk_size=16,
    )  # fmt: skip
    return Mamba2ForCausalLM(config).eval()


def test_the_dispatcher_runs_the_fast_scan_only_inside_its_block_and_keeps_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers.models.mamba2 import modeling_mamba2

    model = _tiny_mamba2()
    ids = torch.randint(0, 64, (2, 40))
    with torch.inference_mode():
        reference = model(input_ids=ids).logits
    assert ssd.install(model) and ssd.install(model), "install is idempotent"
    calls: list[int] = []
    real = ssd.chunk_scan
    monkeypatch.setattr(ssd, "chunk_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        outside = model(input_ids=ids).logits
        assert not calls, "outside a fast_scan block transformers' own scan runs"
        seen_in_thread: list[int] = []

        def other_thread() -> None:
            before = len(calls)
            with torch.inference_mode():
                model(input_ids=ids)
            seen_in_thread.append(len(calls) - before)

        with ssd.fast_scan():
            fast = model(input_ids=ids).logits
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
    assert calls, "inside the block the fast scan runs"
    assert seen_in_thread == [0], "another thread is not inside this thread's block"
    assert getattr(modeling_mamba2.mamba2_chunk_scan, "_overflow_dispatch", False)
    torch.testing.assert_close(outside, reference)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_the_convolution_is_routed_for_families_without_a_scan() -> None:
    """Mamba-1 has a short convolution and no SSD scan: install routes the convolution, the logits stay transformers'."""
    from transformers import MambaConfig, MambaForCausalLM
    from transformers.models.mamba import modeling_mamba

    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2)).eval()
    ids = torch.randint(0, 64, (2, 30))
    with torch.inference_mode():
        reference = model(input_ids=ids).logits
        assert ssd.install(model)
        assert getattr(modeling_mamba.causal_conv1d_fn, "_overflow_dispatch", False)
        with ssd.fast_scan():
            fast = model(input_ids=ids).logits
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_install_ignores_models_without_a_mamba2_scan() -> None:
    class Plain(torch.nn.Module):
        pass

    assert not ssd.install(Plain())
