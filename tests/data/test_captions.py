"""Caption reading: metadata.jsonl and NAME.txt sidecars, and each bad input of issue 12."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from ditlab.data.captions import CaptionError, read_captions
from ditlab.errors import UserError


def _images(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(p)
    return [str(root / n) for n in names]


def _jsonl(path, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def test_metadata_sidecars_and_uncaptioned(tmp_path):
    a, b, c, d, e, f = _images(tmp_path, "a.png", "b.jpg", "c.png", "sub/d.png", "sub/e.png", "f.png")
    _jsonl(tmp_path / "metadata.jsonl",
           {"file_name": "a.png", "text": "  a red square "},
           "",  # blank lines are fine
           {"file_name": "b.jpg", "text": ["first", "second", ""]},
           {"file_name": "gone.png", "text": "not here"},
           {"file_name": "c.png", "text": None},
           {"file_name": "a.png", "text": "another of a"})
    _jsonl(tmp_path / "sub" / "metadata.jsonl", {"file_name": "d.png", "text": "in a subfolder"})
    (tmp_path / "sub" / "e.txt").write_text("\ufeffline one\n\n  line two  \n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("ignored: c is listed in metadata", encoding="utf-8")
    caps, report = read_captions(tmp_path)
    assert caps == {
        a: ["a red square", "another of a"],
        b: ["first", "second"],
        c: [""],
        d: ["in a subfolder"],
        e: ["line one", "line two"],
        f: [""],
    }
    assert list(caps) == sorted(caps)  # the folder's own (sorted) order
    assert (report.images, report.captioned, report.from_metadata, report.from_sidecar) == (6, 4, 3, 1)
    assert report.uncaptioned == [c, f] and report.missing == ["metadata.jsonl:4: gone.png"]
    line = report.summary()
    assert "\n" not in line and "4 of 6 images" in line and "2 without a caption" in line and "gone.png" in line


def test_only_sidecars_and_a_given_file_list(tmp_path):
    a, b = _images(tmp_path, "x/a.png", "x/b.png")
    (tmp_path / "x" / "a.txt").write_text("just one caption", encoding="utf-8")
    caps, report = read_captions(tmp_path, files=[b, a])
    assert list(caps) == [b, a] and caps[a] == ["just one caption"] and caps[b] == [""]
    assert report.metadata_files == [] and report.from_sidecar == 1


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"file_name": "a.png", "text": "ok"', "line 2 is not JSON"),
        ('["a.png", "text"]', "line 2 is not a JSON object"),
        ('{"text": "no name"}', 'line 2 has no "file_name"'),
        ('{"file_name": "a.png", "caption": "wrong key"}', 'no "text" field .other keys: caption.'),
        ('{"file_name": "a.png", "text": 7}', "must be a string or a list of strings, got int"),
        ('{"file_name": "a.png", "text": ["ok", 3]}', "must be a string or a list"),
    ],
)
def test_bad_metadata_lines_name_file_and_line(tmp_path, line, match):
    _images(tmp_path, "a.png")
    _jsonl(tmp_path / "metadata.jsonl", {"file_name": "a.png", "text": "fine"}, line)
    with pytest.raises(CaptionError, match=match) as err:
        read_captions(tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg and str(tmp_path / "metadata.jsonl") in msg


def test_files_that_are_not_utf8(tmp_path):
    _images(tmp_path, "a.png", "b.png")
    (tmp_path / "b.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CaptionError, match=r"b\.txt is not UTF-8 text \(line 1\): save it as UTF-8"):
        read_captions(tmp_path)
    (tmp_path / "b.txt").unlink()
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "ok"}\n{"file_name": "b.png", '
                                              b'"text": "caf\xe9"}\n')
    with pytest.raises(CaptionError, match=r"metadata\.jsonl is not UTF-8 text \(line 2\)"):
        read_captions(tmp_path)


def test_not_a_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_captions(tmp_path / "nope")
