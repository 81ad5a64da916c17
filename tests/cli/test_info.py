"""`memlm info` on a tiny local backbone: the JSON description and the table show the same content."""

from __future__ import annotations

import json

import memlm


def table_rows(output: str) -> dict[str, str]:
    """{first cell: second cell} of each row of a two-column rich table."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 4:
            rows[cells[1]] = cells[2]
    return rows


def test_info_describes_backbone_memories_and_parameter_counts(run, tiny_folder, tmp_path):
    result = run("--home", tmp_path, "info", "--backbone", tiny_folder, "--memory", "recurrent", "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    backbone = described["backbone"]
    assert backbone["model_type"] == "llama" and backbone["hidden_size"] == 32 and backbone["num_layers"] == 2
    assert backbone["parameters"] == sum(p.numel() for p in memlm.load_backbone(str(tiny_folder))[0].parameters())
    recurrent = described["memories"]["recurrent"]
    assert recurrent["parameters"] > 0 and recurrent["config"]["mechanism"] == "recurrent"
    assert recurrent["state"]["updates"] == 0
    assert described["available_mechanisms"] == memlm.available_mechanisms()
    assert set(described["presets"]) == set(memlm.available_presets())
    assert described["paths"]["home"] == str(tmp_path)

    table = run("--home", tmp_path, "info", "--backbone", tiny_folder, "--memory", "recurrent")
    assert table.exit_code == 0, table.output
    rows = table_rows(table.output)
    assert rows["backbone"] == f"{backbone['name']} (llama, 2 layers, width 32)"
    assert rows["backbone parameters"] == f"{backbone['parameters']:,}"
    assert rows["device / dtype"] == "cpu / float32"
    options = {key: value for key, value in recurrent["config"].items() if key != "mechanism"}
    assert rows["memory: recurrent"] == f"{recurrent['parameters']:,} parameters; {options}"
    assert rows["state of recurrent"] == str(recurrent["state"])
    assert rows["mechanisms available"] == ", ".join(memlm.available_mechanisms())
    assert rows["presets"] == ", ".join(described["presets"])
    assert rows["home"] == str(tmp_path) and rows["cache"] == described["paths"]["cache"]
    assert "memories" not in rows


def test_info_without_memories_says_so(run, tiny_folder):
    result = run("info", "--backbone", tiny_folder)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert rows["memories"] == "none attached (use --memory)"
    assert not [row for row in rows if row.startswith("memory: ")]
