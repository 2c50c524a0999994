from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synfer.aus import NUM_AUS, AUVector, from_openface
from synfer.errors import AUError, ConfigError, LabelError
from synfer.expressions import Expression
from synfer.synth.au_sources import file_sha256, load_au_table
from synfer.synth.plan import PlanConfig, Planner


def empirical(path, **kwargs):
    return PlanConfig(au_source="empirical", au_table=str(path), au_table_sha256=file_sha256(path), **kwargs)


def test_named_columns_csv_blank_cells_are_unknown(tmp_path):
    path = tmp_path / "aus.csv"
    path.write_text("label,AU6,AU12,R14\nhappy,2.5,4,\n1,3,3,0\nsad,0,,1\n")
    table = load_au_table(path)
    assert table.labels.tolist() == [1, 1, 2]
    assert table.vector(0).to_dict() == {"AU6": 2.5, "AU12": 4.0}
    assert table.vector(0)["AU12"] == 4.0 and table.vector(0)["R14"] is None
    assert table.vector(0)["AU1"] is None  # a column the table lacks is unknown, not absent
    assert table.vector(2)["AU12"] is None and table.vector(2)["R14"] == 1.0


def test_aus_list_column_as_in_a_synfer_index(tmp_path):
    values = [[0.0] * NUM_AUS for _ in range(2)]
    values[0][4], values[1][0] = 3.0, 2.0
    known = [[True] * NUM_AUS, [False] + [True] * (NUM_AUS - 1)]
    path = tmp_path / "aus.parquet"
    pq.write_table(pa.table({"label": ["happy", "sad"], "aus": values, "au_known": known}), path)
    table = load_au_table(path)
    assert table.vector(0) == AUVector.parse("AU6:3")
    assert table.vector(1)["AU1"] is None  # unknown wins over the stored value


def test_aus_string_column_and_openface_columns(tmp_path):
    strings = tmp_path / "s.csv"
    strings.write_text('label,aus\nsurprise,"1,2,5,26"\nanger,AU4:2.5\n')
    assert load_au_table(strings).vector(0) == AUVector.parse("1,2,5,26")
    openface = tmp_path / "of.csv"
    openface.write_text("label, AU06_r, AU12_r, AU45_c\nhappy, 2.0, 3.5, 1\n")
    expected = from_openface({"AU06_r": 2.0, "AU12_r": 3.5, "AU45_c": 1})
    assert load_au_table(openface).vector(0) == expected


def test_empirical_source_draws_rows_of_the_sample_label_as_a_function_of_i(tmp_path):
    path = tmp_path / "aus.csv"
    rows = ["label,AU6,AU12,AU1,AU4,AU15"] + [f"happy,{1 + i % 4},{2 + i % 3},0,0,0" for i in range(12)]
    rows += [f"sad,0,0,{1 + i % 5},2,3" for i in range(5)] + ["fear,0,0,1,1,1"]
    path.write_text("\n".join(rows) + "\n")
    config = empirical(path, n=60, distribution="custom", weights=(("happy", 1), ("sad", 1)))
    planner, again = Planner(config), Planner(config)
    plans = [planner.plan(i) for i in range(60)]
    for plan in plans:
        if plan.label is Expression.HAPPY:
            assert set(plan.aus.active) <= {"AU6", "AU12"} and plan.aus["AU6"] >= 1
        else:
            assert plan.label is Expression.SAD and set(plan.aus.active) >= {"AU4", "AU15"}
    assert [again.plan(i).aus for i in reversed(range(60))] == [p.aus for p in reversed(plans)]
    assert len(Counter(p.aus for p in plans if p.label is Expression.HAPPY)) > 4  # draws vary with i


def test_empirical_source_errors(tmp_path):
    path = tmp_path / "aus.csv"
    path.write_text("label,AU6,AU12\nhappy,1,2\n")
    with pytest.raises(ConfigError, match="no AUs for neutral, sad"):
        Planner(empirical(path, n=4))  # balanced needs every label
    config = empirical(path, n=4, label=1)
    path.write_text("label,AU6,AU12\nhappy,1,3\n")
    with pytest.raises(ConfigError, match="has changed"):
        Planner(config)
    for text, error, fragment in (
        ("AU6,AU12\n1,2\n", ConfigError, "no 'label' column"),
        ("label,notes\nhappy,x\n", ConfigError, "no AU columns"),
        ("label,AU6\nhappy,7\n", AUError, "row 0: AU6 = 7"),
        ("label,AU6\nelated,1\n", LabelError, "unknown expression"),
        ("label,aus\nhappy,AU99\n", AUError, "row 0"),
        ("label,AU6\n", ConfigError, "no rows"),
    ):
        path.write_text(text)
        with pytest.raises(error, match=fragment):
            load_au_table(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_au_table(tmp_path / "missing.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ConfigError, match="unknown file type"):
        load_au_table(tmp_path / "t.xlsx")
