import json

import numpy as np
import pytest

from maxsim.data.batches import epoch_order, global_batches, micro_batches, sample_documents, shard
from maxsim.data.errors import DataError
from maxsim.data.training_folder import TrainingData


def _replace_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_loads_and_merges_positives(training_folder):
    triples = training_folder / "triples.jsonl"
    # q0 appears again with d5 as a positive; d5 must then never be q0's negative
    with triples.open("a") as f:
        f.write(json.dumps({"query_id": "q0", "positive_ids": ["d5"], "negative_ids": ["d1", "n1"]}) + "\n")
    data = TrainingData.load(training_folder)
    q0 = data.queries.index["q0"]
    d5 = data.corpus.index["d5"]
    assert data.positives_of()[q0] == {data.corpus.index["d0"], d5}
    for ex in data.examples:
        assert not set(ex.negatives) & data.positives_of()[ex.query]


@pytest.mark.parametrize(
    "file, line, text, message",
    [
        ("triples.jsonl", 3, '{"query_id": "q2", "positive_ids": ["d2"]', "malformed JSON"),
        ("triples.jsonl", 2, '{"query_id": "q1", "negative_ids": ["d2"]}', 'missing field "positive_ids"'),
        ("triples.jsonl", 4, '{"query_id": "zz", "positive_ids": ["d2"], "negative_ids": ["d1"]}', '"zz" is not in queries'),
        ("triples.jsonl", 5, '{"query_id": "q4", "positive_ids": ["d4"], "negative_ids": ["nope"]}', '"nope", which is not in corpus'),
        ("queries.jsonl", 6, '{"_id": "q5", "text": "  "}', 'field "text" is empty'),
        ("corpus.jsonl", 2, '{"_id": "d0", "text": "again"}', 'duplicate id "d0"'),
        ("triples.jsonl", 1, '{"query_id": "q0", "positive_ids": ["d0"], "negative_ids": ["d0"]}', "0 usable negatives"),
    ],
)
def test_bad_input_names_file_and_line(training_folder, file, line, text, message):
    _replace_line(training_folder / file, line, text)
    with pytest.raises(DataError) as err:
        TrainingData.load(training_folder)
    assert str(err.value).startswith(f"{training_folder / file}:{line}: ")
    assert message in str(err.value)
    assert err.value.line == line


def test_nway_needs_enough_negatives(training_folder):
    with pytest.raises(DataError, match="--nway 4"):
        TrainingData.load(training_folder, nway=5)
    data = TrainingData.load(training_folder, nway=4)
    docs = sample_documents(data, 0, 4, seed=1, epoch=0)
    assert docs[0] in data.examples[0].positives and len(set(docs[1:])) == 3


def test_hold_out_is_seeded_and_disjoint(training_folder):
    data = TrainingData.load(training_folder)
    train, qrels = data.hold_out(0.25, seed=3)
    assert len(qrels) == 4 and len(train.examples) == 12
    assert not {data.queries.ids[ex.query] for ex in train.examples} & set(qrels)
    assert qrels == data.hold_out(0.25, seed=3)[1]
    assert qrels["q0" if "q0" in qrels else next(iter(qrels))]


def test_shards_are_disjoint_and_cover_the_epoch():
    order = epoch_order(103, seed=7, epoch=2)
    assert sorted(order.tolist()) == list(range(103))
    assert not np.array_equal(order, epoch_order(103, seed=7, epoch=3))
    for world in (1, 2, 3):
        seen = []
        for batch in global_batches(order, 32, world):
            for micro in micro_batches(batch, 2, world):
                parts = [shard(micro, r, world) for r in range(world)]
                # offsets put each rank's part where it sits in the micro-batch
                for part, offset in parts:
                    assert np.array_equal(micro[offset : offset + len(part)], part)
                seen.extend(x for part, _ in parts for x in part.tolist())
        assert sorted(seen) == list(range(103)) and len(seen) == len(set(seen))


def test_undersized_final_batch_kept_unless_smaller_than_world():
    assert [len(b) for b in global_batches(np.arange(5), 32, 1)] == [5]
    assert [len(b) for b in global_batches(np.arange(33), 32, 2)] == [32]
