"""MUVERA's fixed-dimensional encodings against the paper's definitions, on small cases."""

import numpy as np
import pytest

from maxsim.muvera import Muvera


def unit(rng, n, dim):
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chamfer(q, p):
    return float((q @ p.T).max(axis=1).sum())


def test_one_partition_is_the_sum_of_the_query_and_the_mean_of_the_document():
    rng = np.random.default_rng(0)
    q, p = unit(rng, 5, 8), unit(rng, 9, 8)
    encoder = Muvera(dim=8, k_sim=0, d_proj=8, repetitions=1)
    np.testing.assert_allclose(encoder.encode_query(q), q.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(encoder.encode_document(p), p.mean(axis=0), rtol=1e-6)


def test_the_inner_product_is_the_papers_sum_over_partitions():
    """<F_q(Q), F_doc(P)> = sum over repetitions and query tokens q of <q, the block of phi(q)>,
    where a document's block is the mean of its tokens there, or (empty) the token whose
    partition is nearest in Hamming distance; phi is the SimHash of the k_sim Gaussians."""
    rng = np.random.default_rng(1)
    dim, k_sim, reps = 6, 3, 4
    encoder = Muvera(dim=dim, k_sim=k_sim, d_proj=dim, repetitions=reps, seed=3)
    gaussians = np.random.default_rng(3).standard_normal((reps, k_sim, dim))  # the draws, by the seed
    q, p = unit(rng, 7, dim), unit(rng, 5, dim)
    want = 0.0
    for r in range(reps):
        p_parts = [sum((1 << i) for i in range(k_sim) if gaussians[r][i] @ v > 0) for v in p]
        assert encoder.partition_of(p)[r].tolist() == p_parts
        for v in q:
            part = sum((1 << i) for i in range(k_sim) if gaussians[r][i] @ v > 0)
            members = [p[j] for j in range(len(p)) if p_parts[j] == part]
            if members:
                block = np.mean(members, axis=0)
            else:
                block = p[int(np.argmin([bin(part ^ pp).count("1") for pp in p_parts]))]
            want += float(v @ block)
    assert float(encoder.encode_query(q) @ encoder.encode_document(p)) == pytest.approx(want, rel=1e-5)


def test_the_inner_projection_is_a_random_sign_matrix_applied_to_each_block():
    rng = np.random.default_rng(2)
    p = unit(rng, 11, 16)
    full, small = Muvera(dim=16, k_sim=2, d_proj=16, repetitions=3), Muvera(dim=16, k_sim=2, d_proj=4, repetitions=3)
    assert small.output_dim == 3 * 4 * 4 and full.output_dim == 3 * 4 * 16
    projections = small._draws[1]
    assert projections.shape == (3, 4, 16) and np.allclose(np.abs(projections), 0.5)
    blocks = full.encode_document(p).reshape(3, 4, 16)
    want = np.einsum("rkd,rpd->rkp", blocks, projections).reshape(-1)
    np.testing.assert_allclose(small.encode_document(p), want, rtol=1e-5, atol=1e-6)


def test_encodings_rank_documents_as_maxsim_does_on_clustered_tokens():
    rng = np.random.default_rng(4)
    dim, centres = 32, unit(rng, 40, 32)
    docs = [unit(rng, 1, dim) * 0.3 + centres[rng.integers(0, 40, 12)] for _ in range(200)]
    docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]
    encoder = Muvera(dim=dim)
    encoded = np.stack([encoder.encode_document(d) for d in docs])
    agree = []
    for i in range(20):
        q = docs[i][:6] + 0.2 * unit(rng, 6, dim)
        exact = np.array([chamfer(q, d) for d in docs])
        approx = encoded @ encoder.encode_query(q)
        agree.append(np.corrcoef(exact, approx)[0, 1])
        assert int(np.argmax(approx)) == int(np.argmax(exact)) or exact[np.argmax(approx)] >= 0.95 * exact.max()
    assert np.mean(agree) > 0.8, np.mean(agree)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="d_proj"):
        Muvera(dim=8, d_proj=16)
