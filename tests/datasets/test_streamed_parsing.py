"""Reading uploads as streams gives what reading them whole gave: json's own errors at json's own places, the
same rows, and a bound on a row instead of on memory."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.core.errors import Invalid, TooLarge
from app.datasets import json_rows
from app.datasets.files import MAX_COLUMNS, parse_dataset
from app.datasets.text import MAX_ROW_CHARS

ARRAYS = [  # JSON arrays, broken in every place json's array scanner checks, and a few that are fine
    "[",
    "[ ",
    "[1",
    "[1 ",
    "[1,",
    "[1 2",
    "[1,]",
    "[,",
    "[]x",
    "[1]]",
    "[1,,2]",
    "[1 ,2",
    "[\n1,\n",
    "[1.5e",
    "[-",
    "[tru",
    '[{"a": 1},',
    '[{"a": 1}, {"b": [1, 2, {"c": "x"}]},\r\n {"d": 1.5e10}]',
    '[{"a": 1}, {"b": [1, 2, {"c": }]}]',
    '[{"a": 1}\n, {"b": "unterminated]\n',
    '\n\n [ {"a": -0.0, "b": null} , {"a": "\\u00e9\\ud83d\\ude00"} ] \n',
    '[{"a": 1}, {"a": 2}] [',
    '"just a string" x',
]


def expected(doc: str) -> list | str:
    """What json.loads on the whole document says: the rows, or the 422's detail."""
    try:
        value = json.loads(doc)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return value


@pytest.mark.parametrize("window", [1, 2, 7, json_rows.READ_CHARS])
@pytest.mark.parametrize("doc", ARRAYS)
def test_a_json_array_read_an_item_at_a_time_fails_where_json_loads_fails(
    doc: str, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_rows, "READ_CHARS", window)  # the window ends in every place in turn
    want = expected(doc)
    if isinstance(want, str):
        with pytest.raises(Invalid) as caught:
            parse_dataset("a.json", doc.encode())
        assert caught.value.detail == want
    else:
        assert parse_dataset("a.json", doc.encode()).rows == want


def test_a_syntax_error_further_on_wins_over_an_item_that_is_not_an_object() -> None:
    with pytest.raises(Invalid, match=r"^row 2 \(item 2 of the array\): expected a JSON object"):
        parse_dataset("a.json", b'[{"a": 1}, "oops", {"a": 2}]')
    with pytest.raises(Invalid, match=r"^not valid JSON: Expecting value at line 1 column 26"):
        parse_dataset("a.json", b'[{"a": 1}, "oops", {"a": ]')


def test_a_row_longer_than_the_bound_is_413_naming_it() -> None:
    long_text = "x" * (MAX_ROW_CHARS + 10)
    files = {
        "long.jsonl": f'{{"a": 1}}\n{{"a": "{long_text}"}}\n',
        "long.csv": f"a,b\n1,2\n3,{long_text}\n",
        "long.json": f'[{{"a": 1}}, {{"a": "{long_text}"}}]',
    }
    where = {"long.jsonl": "line 2", "long.csv": "line 3", "long.json": "row 2 (item 2 of the array)"}
    for name, content in files.items():
        with pytest.raises(TooLarge) as caught:
            parse_dataset(name, content.encode())
        assert caught.value.detail.startswith(f"{where[name]} is longer than {MAX_ROW_CHARS:,} characters"), name


def test_a_row_just_under_the_bound_is_read() -> None:
    text = "y" * (MAX_ROW_CHARS - 20)
    assert parse_dataset("ok.jsonl", json.dumps({"a": text}).encode()).rows == [{"a": text}]


def test_rows_that_each_bring_new_columns_are_refused_past_the_limit() -> None:
    content = "".join(json.dumps({f"k{i}": 1}) + "\n" for i in range(MAX_COLUMNS + 1)).encode()
    with pytest.raises(Invalid, match=rf"^row {MAX_COLUMNS + 1}: the rows have more than 10,000 different columns"):
        parse_dataset("wide.jsonl", content)


def test_a_bad_byte_after_a_byte_order_mark_is_named_as_it_is() -> None:
    with pytest.raises(Invalid, match=r"not UTF-8 text \(byte 0xff on line 2\)"):
        parse_dataset("bom.csv", b"\xef\xbb\xbfa,b\n\xff,1\n")


def test_parquet_read_a_row_group_and_a_batch_at_a_time_gives_every_row_in_order() -> None:
    table = pa.table({"text": [f"row {i}" * (i % 5 + 1) for i in range(1000)], "n": list(range(1000))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=77)
    assert pq.ParquetFile(io.BytesIO(buffer.getvalue())).metadata.num_row_groups == 13
    assert parse_dataset("t.parquet", buffer.getvalue()).rows == table.to_pylist()
