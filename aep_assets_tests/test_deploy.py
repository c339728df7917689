"""deploy/: the production configuration, checked as far as this machine allows.

- deploy/dagster.yaml passes Dagster's own instance-config validation, and an instance built from it
  (PostgreSQL storage with the psycopg2 scheme, the run queue and its limits, op pools, S3 compute
  logs) really runs a materialization against a real PostgreSQL server and moto's S3 server.
- The Kubernetes parts (K8sRunLauncher in deploy/dagster.yaml, k8s_job_executor in
  deploy/k8s_executor.yaml) are validated by Dagster's run-config validator against the config schemas
  of the installed dagster-k8s (the release the production image pins, in the dev group). No cluster
  is involved: nothing here proves a pod starts.
- deploy/workspace.yaml passes Dagster's workspace schema; deploy/aep-assets.env with the secrets'
  names makes the code location build its AEP resources, not the embedded platform.
"""

import secrets
from pathlib import Path

import boto3
import dagster as dg
import psycopg
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor

from aep_assets.metadata import row_count

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def load_yaml(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def env_file(name: str) -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def env_names(node) -> set[str]:
    """Every `{env: NAME}` in a YAML document."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_names(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_names(v) for v in node)) if node else set()
    return set()


@dg.op(config_schema=K8sRunLauncher.config_type())
def run_launcher_config() -> None:
    """Carries K8sRunLauncher's config schema: Dagster's public validator checks run config, so the
    launcher's config is checked as this op's config."""


@dg.job
def run_launcher_config_job() -> None:
    run_launcher_config()


@dg.op
def one_step() -> None:
    """A step for the executor's job; only its run config is validated, nothing runs."""


@dg.job(executor_def=k8s_job_executor)
def k8s_executor_job() -> None:
    one_step()


def run_config_errors(job: dg.JobDefinition, run_config: dict) -> list[str]:
    """The messages of Dagster's run-config validation (the launchpad's), empty when the config is valid."""
    try:
        dg.validate_run_config(job, run_config)
    except dg.DagsterInvalidConfigError as error:
        return [e.message for e in error.errors]
    return []


def launcher_errors(launcher: dict) -> list[str]:
    return run_config_errors(run_launcher_config_job, {"ops": {"run_launcher_config": {"config": launcher}}})


def executor_errors(executor: dict) -> list[str]:
    return run_config_errors(k8s_executor_job, {"execution": {"config": executor}})


def test_the_instance_file_passes_dagsters_instance_schema():
    config, custom_class = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert custom_class is None
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}, "the password must come from the environment"
    assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == ("dagster_k8s", "K8sRunLauncher")
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert "aep_assets.aep" in config["python_logs"]["managed_python_loggers"]  # AEP mode's log in the runs


def test_the_run_launcher_config_matches_dagster_k8s():
    launcher = load_yaml("dagster.yaml")["run_launcher"]["config"]
    assert launcher_errors(launcher) == []
    # The validator is not vacuous: a misspelt key and a missing required one are refused.
    assert any("job_namespce" in e for e in launcher_errors({**launcher, "job_namespce": "x"}))
    missing = {k: v for k, v in launcher.items() if k != "instance_config_map"}
    assert any("instance_config_map" in e for e in launcher_errors(missing))


def test_the_executor_run_config_matches_dagster_k8s():
    """The file is run config as the launchpad takes it, and its block is what definitions.py configures."""
    document = load_yaml("k8s_executor.yaml")
    assert run_config_errors(k8s_executor_job, document) == []
    executor = document["execution"]["config"]
    wrong = {**executor, "max_concurrent": "four"}
    assert any("max_concurrent" in e for e in executor_errors(wrong))
    assert any("step_k8s_confg" in e for e in executor_errors({**executor, "step_k8s_confg": {}}))


def test_run_launcher_and_executor_mount_the_shared_home_where_the_code_expects_it():
    launcher = load_yaml("dagster.yaml")["run_launcher"]["config"]
    executor = load_yaml("k8s_executor.yaml")["execution"]["config"]
    home = env_file("aep-assets.env")["AEP_ASSETS_HOME"]
    for config in (launcher, executor):
        mounts = {m["name"]: m["mount_path"] for m in config["volume_mounts"]}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in config["volumes"]}
        assert mounts == {"aep-assets-home": home} and set(claims) == set(mounts)
        assert config["env_config_maps"] == ["aep-assets-env"] and config["env_secrets"] == ["aep-assets-secrets"]
    assert launcher["job_namespace"] == executor["job_namespace"]


def test_the_workspace_file_passes_dagsters_workspace_schema():
    path = DEPLOY / "workspace.yaml"
    config = ensure_workspace_config(yaml.safe_load(path.read_text()), str(path))
    assert config["load_from"][0]["grpc_server"]["location_name"] == "aep_assets"


def test_the_environment_files_configure_aep_mode(monkeypatch):
    """With the ConfigMap's values and every secret named, the code location builds AEP, S3 and a
    remote MLflow, and every `{env: ...}` of the instance file is provided."""
    from aep_assets.resources.aep.platform import ENV_REQUIRED, AEPPlatform
    from aep_assets.resources.environment import build_resources
    from aep_assets.resources.storage import S3Storage
    from aep_assets.settings import platform_env

    public = env_file("aep-assets.env")
    secret_names = set(env_file("aep-assets-secrets.env.example"))
    assert not public.keys() & secret_names
    assert {"AEP_CLIENT_SECRET", "AWS_SECRET_ACCESS_KEY"} <= secret_names
    assert not {name for name in public if "SECRET" in name or "PASSWORD" in name}, "secrets in the ConfigMap"
    provided = public.keys() | secret_names | {"DAGSTER_PG_PASSWORD"}  # that one from aep-assets-postgres
    assert env_names(load_yaml("dagster.yaml")) <= provided
    assert {var for _, var in ENV_REQUIRED} <= provided

    for name, value in public.items():
        monkeypatch.setenv(name, value)
    for name in secret_names:
        monkeypatch.setenv(name, f"secret-{name.lower()}")
    resources = build_resources(platform_env())
    assert isinstance(resources["platform"], AEPPlatform)
    assert isinstance(resources["storage"], S3Storage)
    assert resources["mlflow_tracking"].tracking_uri.startswith("http")


def test_an_instance_from_the_production_file_runs_on_postgresql(embedded_server, moto_endpoint, s3_bucket, tmp_path,
                                                                 monkeypatch):
    """deploy/dagster.yaml as it is, but for what this machine lacks: the run launcher is Dagster's
    default (no cluster to launch Kubernetes Jobs in; it cannot resume runs, so run monitoring does not
    try to), the embedded server has no TLS (sslmode=disable), and compute logs go to moto's S3 server
    (endpoint_url)."""
    database = f"dagster_{secrets.token_hex(4)}"
    address = embedded_server.ensure_running(database)
    for name, value in {"DAGSTER_PG_HOST": address.host, "DAGSTER_PG_PORT": str(address.port),
                        "DAGSTER_PG_USER": address.user, "DAGSTER_PG_PASSWORD": "unused-by-trust-auth",
                        "DAGSTER_PG_DB": database, "DAGSTER_COMPUTE_LOGS_BUCKET": "dagster-logs"}.items():
        monkeypatch.setenv(name, value)
    s3_bucket("dagster-logs")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)

    config = load_yaml("dagster.yaml")
    config["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    config["run_monitoring"]["max_resume_run_attempts"] = 0
    config["storage"]["postgres"]["postgres_db"]["params"]["sslmode"] = "disable"
    config["compute_logs"]["config"]["endpoint_url"] = moto_endpoint
    config["compute_logs"]["config"]["local_dir"] = str(tmp_path / "compute-logs")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["batch_a", "batch_b"]), pool="audiences")
    def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        print(f"probe stdout for {context.partition_key}")  # goes to the compute-log manager
        return dg.MaterializeResult(metadata=row_count(3))

    with dg.DagsterInstance.from_config(str(home)) as instance:
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.event_log_storage.postgres_url.startswith("postgresql+psycopg2://")
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == config["concurrency"]["runs"]["max_concurrent_runs"]
        assert [limit["key"] for limit in queue.tag_concurrency_limits] == ["dagster/partition", "dagster/backfill"]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1

        result = dg.materialize([probe], instance=instance, partition_key="batch_a")
        assert result.success
        run_id = result.run_id

    # A new instance (new connections) reads the run, its events and the pool slot back from PostgreSQL.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == "batch_a"
        record = instance.get_latest_materialization_event(dg.AssetKey("probe"))
        assert record.run_id == run_id and record.asset_materialization.partition == "batch_a"
    with psycopg.connect(address.conninfo.replace(f"dbname={address.dbname}", f"dbname={database}")) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_id = %s", (run_id,)).fetchone()[0] == 1
        pools = {row[0] for row in conn.execute("SELECT concurrency_key FROM concurrency_limits")}
        assert "audiences" in pools
    logs = s3.list_objects_v2(Bucket="dagster-logs", Prefix="aep-assets/compute-logs/").get("Contents", [])
    assert any(obj["Key"].endswith(".out") for obj in logs), [obj["Key"] for obj in logs]
    body = b"".join(s3.get_object(Bucket="dagster-logs", Key=obj["Key"])["Body"].read()
                    for obj in logs if obj["Key"].endswith(".out"))
    assert b"probe stdout for batch_a" in body
