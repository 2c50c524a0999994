from synfer.errors import first_line


def test_first_line_of_multi_line_and_empty_messages():
    assert first_line(OSError("no such file\n  more detail\n")) == "no such file"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("\n\n")) == "RuntimeError"
