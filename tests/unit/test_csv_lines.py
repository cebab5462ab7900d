"""A CSV export's lines as the importer reads them: every line end an export may use."""

from __future__ import annotations

import io

import pytest

from app import importer


def lines(data: bytes) -> list[str]:
    return list(importer.TextLines(io.BytesIO(data)))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a;b\nc;d\n", ["a;b\n", "c;d\n"]),  # Unix
        (b"a;b\r\nc;d\r\n", ["a;b\r\n", "c;d\r\n"]),  # Windows, Excel
        (b"a;b\rc;d\re;f", ["a;b\r", "c;d\r", "e;f"]),  # classic Mac OS: one read holds every line
        (b"a;b\r\nc;d\re;f\n", ["a;b\r\n", "c;d\r", "e;f\n"]),  # mixed in one file
        (b"a;b\r\r\nc\n", ["a;b\r", "\r\n", "c\n"]),  # a lone CR before a CRLF is a line of its own
        (b"\xef\xbb\xbfa;b\r\n", ["a;b\r\n"]),  # the byte order mark goes
        (b"a;b", ["a;b"]),  # no end on the last line
    ],
)
def test_each_line_end_ends_a_line_and_is_kept(data: bytes, expected: list[str]) -> None:
    assert lines(data) == expected


def test_rows_read_the_same_whatever_the_line_ends() -> None:
    rows = [["E-post", "Namn"], ["anna@example.com", "Anna"], ["bo@example.com", 'Bo "B" Berg'], ["ce@example.com", ""]]
    unix = b'E-post;Namn\nanna@example.com;Anna\nbo@example.com;"Bo ""B"" Berg"\nce@example.com;\n'
    for data in (unix, unix.replace(b"\n", b"\r\n"), unix.replace(b"\n", b"\r")):
        header, read = importer.read_header(importer.TextLines(io.BytesIO(data)))
        assert [header, *read] == rows, data


def test_a_quoted_field_may_span_lines() -> None:
    data = b'E-post;Namn\r\nanna@example.com;"Anna\r\nAndersson"\r\n'
    header, read = importer.read_header(importer.TextLines(io.BytesIO(data)))
    assert header == ["E-post", "Namn"] and list(read) == [["anna@example.com", "Anna\r\nAndersson"]]
