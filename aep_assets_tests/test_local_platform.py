"""LocalPlatform on the real embedded PostgreSQL: catalog, atomic idempotent batches, Query Service."""

import os
import subprocess
import sys
import tempfile
import textwrap
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aep_assets.lib.datasets import PROFILES
from aep_assets.resources.platform import BatchIngestionError
from aep_assets_tests.factories import NOW, profiles_file


def row_count(platform, table="cmle_profiles"):
    return platform.query(f'SELECT COUNT(*) AS n FROM "{table}"')["n"][0].as_py()


def test_datasets_are_created_once_by_name(platform):
    first = platform.ensure_dataset(PROFILES)
    second = platform.ensure_dataset(PROFILES)
    assert first == second
    assert platform.find_dataset("cmle_profiles") == first
    assert platform.query("SELECT COUNT(*) AS n FROM catalog.datasets")["n"][0].as_py() == 1


def test_same_content_twice_adds_nothing(platform, tmp_path):
    dataset = platform.ensure_dataset(PROFILES)
    path = profiles_file(tmp_path / "a.parquet", range(100))
    first = platform.ingest_batch(dataset, PROFILES, [path], idempotency_key="k1")
    again = platform.ingest_batch(dataset, PROFILES, [path], idempotency_key="k1")
    assert first.status == "success" and first.record_count == 100
    assert again.id == first.id
    assert row_count(platform) == 100
    assert len(platform.batches(dataset)) == 1


def test_a_failed_batch_leaves_the_dataset_unchanged(platform, tmp_path):
    dataset = platform.ensure_dataset(PROFILES)
    platform.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path / "ok.parquet", range(10))],
                          idempotency_key="ok")
    bad = profiles_file(tmp_path / "bad.parquet", [1, 2, 2])
    with pytest.raises(BatchIngestionError, match=r"bad.parquet.*duplicate 'userid'") as failure:
        platform.ingest_batch(dataset, PROFILES, [bad], idempotency_key="bad")
    assert failure.value.batch.status == "failed" and "duplicate" in failure.value.batch.error
    assert row_count(platform) == 10


def test_an_identity_in_two_files_of_one_batch_fails_the_batch(platform, tmp_path):
    dataset = platform.ensure_dataset(PROFILES)
    files = [profiles_file(tmp_path / "a.parquet", range(5)), profiles_file(tmp_path / "b.parquet", range(3, 8))]
    with pytest.raises(BatchIngestionError, match=r"duplicate 'userid' values across the files \(2 repeated\)"):
        platform.ingest_batch(dataset, PROFILES, files, idempotency_key="two-files")
    assert row_count(platform) == 0


def test_a_database_error_mid_copy_rolls_back_everything(platform, tmp_path):
    dataset = platform.ensure_dataset(PROFILES)
    # 10 valid rows, then one that violates a constraint added behind the platform's back: the
    # COPY fails after rows were sent, and none of them may stay.
    platform.execute('ALTER TABLE "cmle_profiles" ADD CONSTRAINT short_city CHECK (length(city) < 20)')
    cities = ["London"] * 10 + ["X" * 30]
    path = profiles_file(tmp_path / "late.parquet", range(11), city=pa.array(cities))
    with pytest.raises(BatchIngestionError, match="short_city"):
        platform.ingest_batch(dataset, PROFILES, [path], idempotency_key="late")
    assert row_count(platform) == 0
    assert [b.status for b in platform.batches(dataset)] == ["failed"]


@pytest.mark.parametrize("problem,make,message", [
    ("wrong type", lambda p: profiles_file(p, range(3), created_at=pa.array(["yesterday"] * 3)), "created_at"),
    ("missing identity", lambda p: profiles_file(p, range(3), userid=pa.array([None, "1", "2"], pa.string())),
     "without identity"),
    ("empty", lambda p: profiles_file(p, []), "empty batch"),
    ("future", lambda p: profiles_file(p, range(3), created_at=pa.array([NOW + timedelta(days=3)] * 3,
                                                                           pa.timestamp("us", "UTC"))), "future"),
    ("truncated", lambda p: p.write_bytes(profiles_file(p, range(50)).read_bytes()[:200]) and p, "parquet"),
])
def test_bad_input_names_file_and_problem(platform, tmp_path, problem, make, message):
    dataset = platform.ensure_dataset(PROFILES)
    path = make(tmp_path / f"{problem.replace(' ', '_')}.parquet")
    with pytest.raises(BatchIngestionError, match=message) as failure:
        platform.ingest_batch(dataset, PROFILES, [path], idempotency_key=problem)
    assert path.name in str(failure.value)
    assert row_count(platform) == 0


def test_completed_batches_after_a_time(platform, tmp_path):
    dataset = platform.ensure_dataset(PROFILES)
    first = platform.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path / "1.parquet", range(5))],
                                  idempotency_key="1")
    second = platform.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path / "2.parquet", range(5, 9))],
                                   idempotency_key="2")
    assert [b.id for b in platform.completed_batches(dataset)] == [first.id, second.id]
    later = platform.completed_batches(dataset, completed_after_ms=second.completed_ms)
    # inclusive; on a fast machine both may complete within the same millisecond
    assert [b.id for b in later] == ([first.id, second.id] if first.completed_ms == second.completed_ms
                                     else [second.id])
    assert platform.completed_batches(dataset, completed_after_ms=second.completed_ms + 1) == []


def test_two_processes_starting_the_server_at_once_share_one(session_home):
    home = Path(tempfile.mkdtemp(prefix="race-", dir=session_home))
    home.chmod(0o755)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from aep_assets.resources.embedded_postgres import EmbeddedPostgres
        print(EmbeddedPostgres(Path({str(home / 'postgres')!r})).ensure_running().port)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    ports = [p.communicate(timeout=120)[0].strip() for p in procs]
    try:
        assert all(p.returncode == 0 for p in procs)
        assert ports[0] == ports[1]
        postmasters = subprocess.run(["pgrep", "-f", f"postgres -D {home}"], capture_output=True, text=True)
        assert len(postmasters.stdout.split()) == 1
    finally:
        from aep_assets.resources.embedded_postgres import EmbeddedPostgres

        EmbeddedPostgres(home / "postgres").remove()


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only when we are root")
def test_a_home_the_server_user_cannot_reach_gets_its_server_files_elsewhere(session_home, monkeypatch):
    """A clone in `mktemp -d` (mode 700): the server's data and log move out, and stay there."""
    import psycopg

    from aep_assets.resources.embedded_postgres import EmbeddedPostgres

    private = Path(tempfile.mkdtemp(prefix="private-", dir=session_home))  # mode 700
    shared = Path(tempfile.mkdtemp(prefix="server-tmp-", dir=session_home))
    shared.chmod(0o755)
    monkeypatch.setenv("AEP_ASSETS_SERVER_TMP", str(shared))
    server = EmbeddedPostgres(private / "home" / "postgres")
    try:
        address = server.ensure_running()
        assert server.data_dir.is_relative_to(shared) and (server.data_dir / "PG_VERSION").exists()
        with psycopg.connect(address.conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        server.stop()
        again = EmbeddedPostgres(private / "home" / "postgres")  # a later process: same data
        with psycopg.connect(again.ensure_running().conninfo, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone()[0] == 1
        relocated = again.server_dir
        again.remove()  # `make clean`: the relocated folder goes with the home
        assert not relocated.exists() and not (private / "home" / "postgres").exists()
        assert again.answering_address() is None
    finally:
        server.stop()


def test_create_table_as_replaces_and_keeps_the_dataset(platform):
    first = platform.create_table_as("cmle_ctas_probe", "SELECT 1 AS x")
    second = platform.create_table_as("cmle_ctas_probe", "SELECT 2 AS x UNION ALL SELECT 3")
    assert first.id == second.id
    assert sorted(platform.query('SELECT x FROM "cmle_ctas_probe"')["x"].to_pylist()) == [2, 3]
    count = platform.query("SELECT COUNT(*) AS n FROM catalog.datasets WHERE name = 'cmle_ctas_probe'")
    assert count["n"][0].as_py() == 1


def test_replace_slices_swaps_only_the_given_keys_in_one_transaction(platform):
    row = "SELECT '{}' AS userid, {} AS score, '{}' AS profile_batch"
    union = " UNION ALL ".join
    table = platform.ensure_table("cmle_slices", row.format("x", 1.0, "k"))
    first = union([row.format("u1", 0.5, "b1"), row.format("u2", 0.7, "b2")])
    assert platform.replace_slices(table, "profile_batch", ["b1", "b2"], first) == {"b1": 1, "b2": 1}
    second = union([row.format("u3", 0.9, "b1"), row.format("u4", 0.1, "b1")])
    assert platform.replace_slices(table, "profile_batch", ["b1", "b3"], second) == {"b1": 2, "b3": 0}
    with pytest.raises(ValueError, match="not one of"):  # a row of another key: nothing changes
        platform.replace_slices(table, "profile_batch", ["b1"], union([row.format("u5", 0.2, "b1"),
                                                                       row.format("u6", 0.2, "b2")]))
    rows = platform.query('SELECT userid, profile_batch FROM "cmle_slices" ORDER BY userid').to_pylist()
    assert rows == [{"userid": "u2", "profile_batch": "b2"}, {"userid": "u3", "profile_batch": "b1"},
                    {"userid": "u4", "profile_batch": "b1"}]


def test_the_merged_scores_keep_the_latest_score_of_each_profile(platform, tmp_path):
    from aep_assets.lib.datasets import PROPENSITY_SCORES

    def scores_file(name, ids, value, as_of):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({
            "userid": [f"{i:038d}" for i in ids], "propensity": [value] * len(ids), "decile": [1] * len(ids),
            "model_name": ["m"] * len(ids), "model_version": ["1"] * len(ids),
            "as_of": pa.array([as_of] * len(ids), pa.timestamp("us", "UTC")),
            "profile_batch": ["b"] * len(ids)}), path)
        return path

    dataset = platform.ensure_dataset(PROPENSITY_SCORES)
    platform.ingest_batch(dataset, PROPENSITY_SCORES, [scores_file("new", [1, 2], 0.9, NOW)], idempotency_key="new")
    # scored earlier but landing later (a delayed file): profile 1 and 2 keep their newer score
    platform.ingest_batch(dataset, PROPENSITY_SCORES, [scores_file("old", [1, 2, 3], 0.1, NOW - timedelta(hours=1))],
                          idempotency_key="old")
    bad = scores_file("bad", [1, 1], 0.5, NOW + timedelta(seconds=1))  # duplicate ids: the batch fails
    with pytest.raises(BatchIngestionError):
        platform.ingest_batch(dataset, PROPENSITY_SCORES, [bad], idempotency_key="bad")
    current = platform.current_records(dataset, PROPENSITY_SCORES)
    view = f"SELECT userid, propensity FROM ({current}) AS m ORDER BY userid"
    merged = platform.query(view)
    assert merged["propensity"].to_pylist() == [0.9, 0.9, 0.1]
    platform.execute('DROP TABLE "cmle_propensity_scores__profile"')  # a home from before the merged table
    platform.ensure_dataset(PROPENSITY_SCORES)
    again = platform.query(view)
    assert again.equals(merged)


def test_the_same_batch_requested_twice_at_once_lands_once(platform, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    dataset = platform.ensure_dataset(PROFILES)
    path = profiles_file(tmp_path / "same.parquet", range(20_000))
    with ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda _: platform.ingest_batch(dataset, PROFILES, [path], idempotency_key="same"),
                                range(2)))
    assert batches[0].id == batches[1].id
    assert row_count(platform) == 20_000
    assert [b.status for b in platform.batches(dataset)] == ["success"]
