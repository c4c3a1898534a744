import pytest

from vitlab.io import atomic_write, parse_json, parse_toml, read_json, write_json


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, lambda tmp: tmp.write_text("first"))
    atomic_write(target, lambda tmp: tmp.write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def crash(tmp):
        tmp.write_text('{"half": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_respects_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda tmp: (tmp.unlink(), tmp.touch(mode=0o600)))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("parse, text", [(parse_json, "[" * 100_000 + "]" * 100_000),
                                         (parse_toml, "a = " + "[" * 100_000 + "]" * 100_000)])
def test_text_nested_too_deeply_is_a_value_error(parse, text):
    with pytest.raises(ValueError, match="nested too deeply to read"):
        parse(text)


def test_read_json_reads_what_write_json_wrote(tmp_path):
    assert read_json(write_json(tmp_path / "a.json", {"a": [1, {"b": None}]})) == {"a": [1, {"b": None}]}
