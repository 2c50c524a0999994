import numpy as np
import pytest

from synfer.aus import AU_INDEX, NUM_AUS
from synfer.data.au_table import AUScores, read_au_table, read_au_table_metadata, write_au_table
from synfer.errors import DatasetError


def _table(**kwargs):
    scores = np.zeros((2, NUM_AUS), np.float32)
    scores[0, AU_INDEX["AU12"]] = 4.0
    known = np.ones((2, NUM_AUS), bool)
    known[1, AU_INDEX["AU9"]] = False
    return AUScores(["a/x.png", "b/x.png"], scores, known, **kwargs)


def test_round_trip_keeps_scores_mask_metadata_and_extra_columns(tmp_path):
    table = _table(source={"detector": "ground-truth"}, suggested_threshold=None, extra={"label": [1, 0]})
    path = write_au_table(tmp_path / "aus.parquet", table)
    back = read_au_table(path)
    assert back.ids == ["a/x.png", "b/x.png"]
    np.testing.assert_array_equal(back.scores, table.scores)
    np.testing.assert_array_equal(back.known, table.known)
    assert back.extra == {"label": [1, 0]}
    assert back.source == {"detector": "ground-truth"}
    assert back.row("b/x.png") == 1
    assert read_au_table_metadata(path)["scores"] == "intensity"


def test_bad_tables_are_refused_with_the_offending_id():
    with pytest.raises(DatasetError, match="appears twice"):
        AUScores(["x.png", "x.png"], np.zeros((2, NUM_AUS)), np.ones((2, NUM_AUS), bool))
    with pytest.raises(DatasetError, match="relative path"):
        AUScores(["../x.png"], np.zeros((1, NUM_AUS)), np.ones((1, NUM_AUS), bool))
    scores = np.zeros((1, NUM_AUS))
    scores[0, 0] = 2.0
    with pytest.raises(DatasetError, match="AU1 = 2 is outside 0-1"):
        AUScores(["x.png"], scores, np.ones((1, NUM_AUS), bool), kind="probability")
    # An unknown slot's value is not checked: it means nothing.
    AUScores(["x.png"], scores, np.zeros((1, NUM_AUS), bool), kind="probability")


def test_a_parquet_file_that_is_not_an_au_table_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(DatasetError, match="not a synfer AU table"):
        read_au_table(tmp_path / "other.parquet")
