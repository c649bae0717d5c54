"""open_dataset on a damaged meta/info.json: a DatasetError naming the file, never AttributeError / TypeError."""

from __future__ import annotations

import pytest

from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[1, 2, 3]", "must be a JSON object, found list"),
        (b'"v3.0"', "must be a JSON object, found str"),
        (b"null", "must be a JSON object, found NoneType"),
        (b'{"codebase_version": 3.0}', "codebase_version must be a string"),
        (b'{"codebase_version": ["v3.0"]}', "codebase_version must be a string"),
        (b'{"codebase_version": "v9"}', "unsupported codebase_version 'v9'"),
        (b'{"codebase_version": "v3', "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
def test_a_damaged_info_json_is_a_dataset_error_naming_it(tmp_path, content, message):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_bytes(content)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset(tmp_path)
    assert str(tmp_path / "meta" / "info.json") in str(err.value)
