import math

import torch

from maxsim.losses import candidate_mask_for_batch, contrastive_loss


def test_loss_with_in_batch_negatives_and_masked_known_positive():
    # two queries, nway 2: columns [q0+, q0-, q1+, q1-], documents ids [10, 11, 12, 10]
    # q1's own negative (column 3) is document 10, which is q0's positive: fine for q1.
    # q0 also has document 12 as a known positive, so column 2 is masked out for q0.
    doc_ids = torch.tensor([10, 11, 12, 10])
    positives = [{10, 12}, {12}]
    positive_column, mask = candidate_mask_for_batch(doc_ids, positives, 0, 2, True)
    assert positive_column.tolist() == [0, 2]
    # q0: column 0 is its positive, column 3 is the same document 10 again -> masked
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    scores = torch.tensor([[3.0, 1.0, 2.5, 3.0], [0.5, 0.0, 2.0, 1.0]])
    out = contrastive_loss(scores, positive_column, mask)
    l0 = -3.0 + math.log(math.exp(3.0) + math.exp(1.0))
    l1 = -2.0 + math.log(math.exp(0.5) + math.exp(0.0) + math.exp(2.0) + math.exp(1.0))
    assert abs(out.loss.item() - (l0 + l1) / 2) < 1e-6
    assert abs(out.positive_term.item() - (-(3.0 + 2.0) / 2)) < 1e-6
    assert abs(out.positive_term.item() + out.logsumexp_term.item() - out.loss.item()) < 1e-6
    assert out.accuracy.item() == 1.0


def test_without_in_batch_negatives_only_own_documents_count():
    doc_ids = torch.tensor([1, 2, 3, 4])
    positive_column, mask = candidate_mask_for_batch(doc_ids, [{1}, {3}], 0, 2, False)
    assert mask.tolist() == [[True, True, False, False], [False, False, True, True]]
    scores = torch.tensor([[1.0, 2.0, 9.0, 9.0], [9.0, 9.0, 0.0, 0.0]])
    out = contrastive_loss(scores, positive_column, mask, temperature=0.5)
    l0 = -2.0 + math.log(math.exp(2.0) + math.exp(4.0))
    l1 = math.log(2.0)
    assert abs(out.loss.item() - (l0 + l1) / 2) < 1e-6


def test_query_offset_for_a_shard():
    # second rank's single query is global query 1 of a 2-query batch
    positive_column, mask = candidate_mask_for_batch(torch.tensor([5, 6, 7, 8]), [{7}], 1, 2, False)
    assert positive_column.tolist() == [2]
    assert mask.tolist() == [[False, False, True, True]]


def test_normaliser_scales_the_sum():
    scores = torch.tensor([[1.0, 0.0]])
    pc, mask = candidate_mask_for_batch(torch.tensor([1, 2]), [{1}], 0, 2, True)
    one = contrastive_loss(scores, pc, mask).loss
    half = contrastive_loss(scores, pc, mask, normaliser=2).loss
    assert abs(one.item() - 2 * half.item()) < 1e-7


def test_candidate_mask_equals_the_per_query_definition_on_a_random_batch():
    """Each query's known positives masked out of every column but its own positive's, as
    `torch.isin` per query computes it, for uneven numbers of positives and repeated documents."""
    g = torch.Generator().manual_seed(0)
    for use_ib in (True, False):
        for _ in range(20):
            n_local, nway, offset = 5, 3, 2
            doc_ids = torch.randint(0, 12, ((n_local + offset + 1) * nway,), generator=g)
            positives = [set(torch.randint(0, 12, (int(k),), generator=g).tolist()) | {int(doc_ids[(offset + i) * nway])}
                         for i, k in enumerate(torch.randint(0, 4, (n_local,), generator=g))]
            column, mask = candidate_mask_for_batch(doc_ids, positives, offset, nway, use_ib)
            for i, known in enumerate(positives):
                own = torch.arange(len(doc_ids)) // nway == offset + i
                expected = (torch.ones_like(own) if use_ib else own) & ~torch.isin(doc_ids, torch.tensor(sorted(known)))
                expected[column[i]] = True
                assert mask[i].tolist() == expected.tolist()
