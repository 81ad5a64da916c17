"""Memorizing a corpus for many users (`memlm.batch.memorize_users`): on a local Ray cluster the stored
records and vectors equal the serial run's, in a directory and in PostgreSQL."""

from __future__ import annotations

import pytest
import torch
from stores import store_url

from memlm.errors import ConfigError
from memlm.store import load_store

ray = pytest.importorskip("ray", reason="the Ray tests need `pip install memlm[ray]`")

from memlm.batch import memorize_users  # noqa: E402

TEXTS = {"ada": "Ada keeps bees on the roof. The hive is blue. " * 6,
         "bob": "Bob repairs clocks in a small shop by the river. " * 4,
         "cy": "Cy collects stamps from islands nobody has heard of. " * 5}
JOBS = [{"user": user, "text": text} for user, text in TEXTS.items()]
MEMORIES = [{"mechanism": "knn", "attention": "joint", "knn_lm": True}]


def stored(location: str, user: str) -> tuple:
    store = load_store(location, user)
    records = [{k: v for k, v in r.to_dict().items() if k != "created"} for r in store.records.select()]
    groups = {key: (group.ids, group.keys.float(), group.values, group.origins) for key, group in store.groups.items()}
    return records, groups


def assert_same(first: tuple, second: tuple) -> None:
    assert first[0] == second[0] and first[0]
    assert sorted(first[1]) == sorted(second[1])
    for key, arrays in first[1].items():
        for a, b in zip(arrays, second[1][key], strict=True):
            assert torch.equal(a, b), key


def start_local_ray(attempts: int = 2) -> None:
    """A local Ray cluster. Ray gives its raylet a fixed 30 s to register; on a loaded 2-core CI machine
    it once missed that (2026-12-07, "timed out during startup"), so such a start is tried once more."""
    for attempt in range(attempts):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == attempts - 1:
                raise
            ray.shutdown()


def test_memorizing_users_on_ray_equals_the_serial_run(tiny_folder, tmp_path, _store_servers):
    serial = memorize_users(JOBS, tmp_path / "serial", str(tiny_folder), MEMORIES, segment_length=24)
    assert [s["user"] for s in serial] == list(TEXTS) and all(s["items"] > 0 for s in serial)
    postgres = store_url("postgres", tmp_path, _store_servers / "postgres")
    start_local_ray()
    try:
        fanned = memorize_users(JOBS, tmp_path / "ray", str(tiny_folder), MEMORIES, segment_length=24, ray="local")
        in_database = memorize_users(JOBS, postgres, str(tiny_folder), MEMORIES, segment_length=24, ray="local",
                                     tasks=2)
    finally:
        ray.shutdown()
    assert fanned == serial and in_database == serial
    for user in TEXTS:
        expected = stored(str(tmp_path / "serial"), user)
        assert {r["user"] for r in expected[0]} == {user}
        assert_same(expected, stored(str(tmp_path / "ray"), user))
        assert_same(expected, stored(postgres, user))


def test_bad_jobs_are_refused(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="twice"):
        memorize_users(JOBS + JOBS[:1], tmp_path, str(tiny_folder))
    with pytest.raises(ConfigError, match="no text"):
        memorize_users([{"user": "ada", "text": " "}], tmp_path, str(tiny_folder))
    with pytest.raises(ConfigError, match="exactly one knn memory"):
        memorize_users(JOBS[:1], tmp_path, str(tiny_folder), ["recurrent"])


def test_the_command_memorizes_a_users_file(tiny_folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from memlm.cli import app

    (tmp_path / "bob.txt").write_text(TEXTS["bob"])
    users = tmp_path / "users.jsonl"
    users.write_text(json.dumps({"user": "ada", "text": TEXTS["ada"]}) + "\n" + json.dumps({"user": "bob",
                                                                                        "file": "bob.txt"}) + "\n")
    result = CliRunner().invoke(app, ["memory", "memorize", "--users-file", str(users), "--store",
                                      str(tmp_path / "out"), "--backbone", str(tiny_folder), "--memory-config",
                                      str(_config(tmp_path)), "--segment-length", "24", "--json"])
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.output)
    direct = memorize_users(JOBS[:2], tmp_path / "direct", str(tiny_folder), MEMORIES, segment_length=24)
    assert summaries == direct
    for user in ("ada", "bob"):
        assert_same(stored(str(tmp_path / "direct"), user), stored(str(tmp_path / "out"), user))
    bad = CliRunner().invoke(app, ["memory", "memorize", "--users-file", str(users), "--backbone", str(tiny_folder)])
    assert bad.exit_code != 0 and "--store" in bad.output


def _config(tmp_path):
    import json

    path = tmp_path / "memory.json"
    path.write_text(json.dumps({"memories": MEMORIES}))
    return path
