"""UTF-8-safe streaming and stop-string scanning, without a model."""

from edgesrm.engine.text import StopScanner, Utf8Stream


def test_utf8_stream_never_splits_a_character():
    data = "a😀é日".encode()
    stream = Utf8Stream()
    pieces = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(pieces) + stream.flush() == "a😀é日"
    assert all("\ufffd" not in p for p in pieces)
    # The emoji's four bytes give nothing until the last one arrives.
    assert pieces[1:5] == ["", "", "", "😀"]


def test_utf8_stream_state_can_be_copied_mid_character():
    emoji = "😀".encode()
    a = Utf8Stream()
    assert a.push(emoji[:2]) == ""
    b = Utf8Stream()
    b.setstate(a.getstate())
    assert b.push(emoji[2:]) == "😀"


def test_utf8_stream_flush_replaces_an_unfinished_character():
    stream = Utf8Stream()
    stream.push("😀".encode()[:3])
    assert stream.flush() == "\ufffd"


def test_stop_scanner_finds_earliest_stop_across_the_boundary():
    scanner = StopScanner(["END", "\n\n"])
    text = "abc EN"
    assert scanner.find(text, 0) == (-1, None)
    text += "D more\n\n"
    # "END" started before the new text did: it must still be found.
    assert scanner.find(text, 6) == (4, "END")


def test_stop_scanner_holds_back_possible_prefix():
    scanner = StopScanner(["</answer>"])
    assert scanner.safe_end("the answer is 4 </ans") == len("the answer is 4 ")
    assert scanner.safe_end("the answer is 4 <") == len("the answer is 4 ")
    assert scanner.safe_end("no stop here") == len("no stop here")


def test_stop_scanner_without_stops():
    scanner = StopScanner([])
    assert scanner.find("anything", 0) == (-1, None)
    assert scanner.safe_end("anything") == 8
