"""`memlm inspect`: the activity picture from the command line."""

from __future__ import annotations


def test_memlm_inspect_writes_the_picture(tiny_folder, tmp_path, run):
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time there was a memory. " * 20)
    result = run("inspect", text, "--backbone", tiny_folder, "--out", tmp_path / "activity.png",
                 "--segment-length", 64, "--max-tokens", 300)
    assert result.exit_code == 0, result.output
    assert "traced 5 segment(s) of 300 tokens through recurrent, slots, importance" in result.output
    assert (tmp_path / "activity.png").read_bytes().startswith(b"\x89PNG")
