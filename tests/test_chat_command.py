"""`edgesrm chat`: a conversation in the terminal, its history kept in the KV cache."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgesrm.cli import cli


def chat(*lines: str, args: tuple[str, ...] = ()):
    return CliRunner().invoke(cli, ["chat", "--seed", "1", "--max-tokens", "24", *args], input="\n".join(lines) + "\n")


def test_a_conversation_keeps_its_history_in_the_cache(model_path, tmp_path):
    saved = tmp_path / "talk.json"
    out = chat("My name is Ada.", "What is my name?", f"/save {saved}", "/bye")
    assert out.exit_code == 0, out.output
    stats = [line for line in out.stderr.splitlines() if "prompt tokens cached" in line]
    assert len(stats) == 2
    assert stats[0].endswith(", 0 of " + stats[0].split(" of ")[1])  # the first turn: nothing cached
    cached, total = (int(x) for x in stats[1].split(", ")[-1].split(" prompt")[0].split(" of "))
    assert 0 < cached < total  # the second turn prefilled only what was new
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "My name is Ada."


def test_commands_change_the_next_turn(model_path, tmp_path):
    saved = tmp_path / "t.json"
    out = chat("/budget 8", "Tell me a long story.", "/strategy cot", "What is 2+2?", "/reset", f"/save {saved}",
               "/deadline 30", "/think off", "/help")
    assert out.exit_code == 0, out.output  # end of input leaves like Ctrl-D
    stats = [line for line in out.stderr.splitlines() if "prompt tokens cached" in line]
    assert len(stats) == 2 and int(stats[0].split("[")[1].split(" tokens")[0]) <= 8
    assert json.loads(saved.read_text()) == []  # /reset forgot both turns
    assert "/strategy NAME" in out.stderr  # /help


def test_bad_commands_get_one_error_line_and_the_chat_goes_on(model_path, tmp_path):
    out = chat("/budget lots", "/budget 0", "/strategy nonsense", "/frobnicate", "/deadline -1",
               f"/save {tmp_path / 'missing' / 'x.json'}", "Hi!", "/bye")
    assert out.exit_code == 0, out.output
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 6, out.stderr
    assert "Traceback" not in out.output + out.stderr
    assert sum("prompt tokens cached" in line for line in out.stderr.splitlines()) == 1  # "Hi!" was answered
