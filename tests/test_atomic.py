from live2d.atomic import cut_torn_line


def test_a_torn_last_line_is_cut_and_whole_lines_stay(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_bytes(b"one\ntwo\nhalf a li")
    assert cut_torn_line(path)
    assert path.read_bytes() == b"one\ntwo\n"
    assert not cut_torn_line(path)  # now whole: left as it is
    assert path.read_bytes() == b"one\ntwo\n"


def test_a_file_of_one_torn_line_is_emptied_and_a_missing_one_stays_missing(tmp_path):
    path = tmp_path / "rows.txt"
    assert not cut_torn_line(path) and not path.exists()
    path.write_bytes(b"")
    assert not cut_torn_line(path)
    path.write_bytes(b"x" * 200_000)  # longer than one block read back from the end
    assert cut_torn_line(path) and path.read_bytes() == b""


def test_a_torn_line_longer_than_a_block_is_cut_at_its_start(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_bytes(b"kept\n" + b"y" * 150_000)
    assert cut_torn_line(path) and path.read_bytes() == b"kept\n"
