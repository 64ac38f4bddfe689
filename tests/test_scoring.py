import pytest
import torch

from maxsim.scoring import maxsim


def test_maxsim_hand_computed_with_masks():
    # query 0: tokens (1,0) and (0,1); query 1: tokens (1,0) and a padded token that is ignored
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    q_mask = torch.tensor([[True, True], [True, False]])
    # doc 0: (0.6, 0.8), (-1, 0); doc 1: (0, -1) and a padded (1, 0) that must not count
    d = torch.tensor([[[0.6, 0.8], [-1.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]]])
    d_mask = torch.tensor([[True, True], [True, False]])
    scores = maxsim(q, q_mask, d, d_mask)
    # q0.d0: max(0.6,-1) + max(0.8, 0) = 1.4 ; q0.d1: 0 + (-1) = -1
    # q1.d0: 0.6 ; q1.d1: 0.0
    expected = torch.tensor([[1.4, -1.0], [0.6, 0.0]])
    assert torch.allclose(scores, expected, atol=1e-6)
    assert scores.dtype == torch.float32


def test_padding_is_minus_infinity_not_zero():
    # every real similarity is negative; a zero-multiplied padding slot would win with 0
    q = torch.tensor([[[1.0, 0.0]]])
    d = torch.tensor([[[-0.5, 0.5], [0.0, 0.0]]])
    scores = maxsim(q, torch.tensor([[True]]), d, torch.tensor([[True, False]]))
    assert scores.item() == -0.5


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 5, 8, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(11, 7, 8, generator=g), dim=-1)
    q_mask = torch.rand(3, 5, generator=g) > 0.2
    d_mask = torch.rand(11, 7, generator=g) > 0.3
    whole = maxsim(q, q_mask, d, d_mask)
    chunked = maxsim(q, q_mask, d, d_mask, block_elements=3 * 5 * 7 * 2)
    # the same sums taken in other blocks may differ in the last bits on another CPU
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-6)
    # brute force over python loops
    for i in range(3):
        for j in range(11):
            total = 0.0
            for a in range(5):
                if not q_mask[i, a]:
                    continue
                sims = [float(q[i, a] @ d[j, b]) for b in range(7) if d_mask[j, b]]
                total += max(sims) if sims else 0.0
            assert abs(whole[i, j].item() - total) < 1e-5


def test_bf16_inputs_are_summed_in_float32():
    q = torch.full((1, 32, 1), 1.0, dtype=torch.bfloat16)
    d = torch.full((1, 1, 1), 1.0 + 2**-7, dtype=torch.bfloat16)  # exactly representable
    score = maxsim(q, torch.ones(1, 32, dtype=torch.bool), d, torch.ones(1, 1, dtype=torch.bool))
    assert score.dtype == torch.float32
    # 32 * 1.0078125 = 32.25; a bf16 accumulator would round it to 32.0 or 32.5
    assert score.item() == 32.25


def test_gradients_flow_only_to_the_best_token():
    q = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    d = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]], requires_grad=True)
    maxsim(q, torch.tensor([[True]]), d, torch.tensor([[True, True]])).sum().backward()
    assert torch.equal(d.grad, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    assert torch.equal(q.grad, torch.tensor([[[0.9, 0.1]]]))


def test_chunked_gradients_equal_unchunked():
    g = torch.Generator().manual_seed(1)
    q0 = torch.randn(4, 6, 8, generator=g)
    d0 = torch.randn(9, 5, 8, generator=g)
    q_mask = torch.ones(4, 6, dtype=torch.bool)
    d_mask = torch.rand(9, 5, generator=g) > 0.2
    grads = []
    for block in (1 << 25, 4 * 6 * 5):  # whole, then one document per chunk
        q, d = q0.clone().requires_grad_(), d0.clone().requires_grad_()
        (maxsim(q, q_mask, d, d_mask, block_elements=block) * torch.arange(9.0)).sum().backward()
        grads.append((q.grad, d.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


def test_packed_maxsim_equals_padded_maxsim():
    from maxsim.scoring import maxsim_packed

    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([3, 1, 5, 2])
    tokens = torch.randn(int(lengths.sum()), 8, generator=g)
    query = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    qmask = torch.tensor([True, True, False, True, True, True])
    padded = torch.zeros(4, 5, 8)
    dmask = torch.arange(5)[None, :] < lengths[:, None]
    padded[dmask] = torch.nn.functional.normalize(tokens, dim=-1)
    expected = maxsim(query[None], qmask[None], padded, dmask)[0]
    got = maxsim_packed(query, qmask, tokens, lengths, 1 / tokens.norm(dim=1))
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.dtype == torch.float32 and got.shape == (4,)


def _reference_maxsim(q, qm, d, dm):
    """MaxSim straight from its definition, differentiated by autograd."""
    sim = torch.einsum("qid,njd->qinj", q, d).masked_fill(~dm[None, None], float("-inf"))
    best = sim.max(dim=-1).values
    best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)
    return (best * qm[:, :, None].to(best.dtype)).sum(dim=1)


@pytest.mark.parametrize("recompute_above", [0, 1 << 40])  # the recomputing backward, and autograd's
@pytest.mark.parametrize("block_elements", [64, 1 << 20])  # many document chunks, and one
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_maxsim_gradients_equal_autograds_of_the_definition(block_elements, dtype, recompute_above, monkeypatch):
    monkeypatch.setattr("maxsim.scoring.RECOMPUTE_ABOVE", recompute_above)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 4, 8, generator=g, dtype=dtype)
    d = torch.randn(7, 6, 8, generator=g, dtype=dtype)
    qm = torch.rand(5, 4, generator=g) > 0.2
    dm = torch.rand(7, 6, generator=g) > 0.3
    dm[3] = False  # a document with no token that takes part: score 0, no gradient
    weights = torch.randn(5, 7, generator=g, dtype=torch.float32)
    grads = []
    for fn in (lambda a, b: maxsim(a, qm, b, dm, block_elements=block_elements),
               lambda a, b: _reference_maxsim(a, qm, b, dm)):
        a, b = q.clone().requires_grad_(), d.clone().requires_grad_()
        scores = fn(a, b)
        (scores.float() * weights).sum().backward()
        grads.append((scores.detach().float(), a.grad, b.grad))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)  # scores: summed in float32
    for ours, reference in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(ours, reference, atol=tol, rtol=tol)
    assert grads[0][2][3].abs().sum() == 0
