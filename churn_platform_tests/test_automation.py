"""Inbox sensor, automation conditions and incident sensors: the platform keeps itself current."""

import datetime as dt
import warnings
from pathlib import Path

import dagster as dg

from churn_platform import automation, inbox
from churn_platform.config import load_spec
from churn_platform.core.ops.incidents import IncidentStore
from churn_platform.core.ops.log import OpsLog
from churn_platform.core.sources import batch_order
from churn_platform.definitions import build_definitions
from churn_platform.settings import DEFAULT_SPEC, load_settings
from churn_platform_tests.conftest import TELCO_HEADER, telco_row

NOW = dt.datetime(2026, 11, 27, 10, 30, tzinfo=dt.UTC)


def test_inbox_files_become_batches_with_idempotent_run_keys(settings):
    spec = load_spec(DEFAULT_SPEC, settings.home)
    settings.inbox.mkdir(parents=True)
    (settings.inbox / "new customers.csv").write_text(f"{TELCO_HEADER}\n{telco_row('1')}\n")
    (settings.inbox / "notes.txt").write_text("ignored")
    result = inbox.scan_inbox(settings, spec, NOW)
    assert [r.run_key for r in result.run_requests] == ["20261127T103000Z-new_customers.csv"]
    assert result.run_requests[0].partition_key == "20261127T103000Z-new_customers.csv"
    assert result.dynamic_partitions_requests[0].partition_keys == [
        "20261127T103000Z-new_customers.csv"
    ]
    assert (settings.home / "batches" / "20261127T103000Z-new_customers.csv").is_file()
    # the file left the inbox, so a second evaluation requests nothing
    again = inbox.scan_inbox(settings, spec, NOW)
    assert again.run_requests == []
    assert (settings.inbox / "notes.txt").exists()


def test_a_bad_file_is_rejected_once_with_a_reason(settings):
    spec = load_spec(DEFAULT_SPEC, settings.home)
    settings.inbox.mkdir(parents=True)
    (settings.inbox / "broken.csv").write_text("customerID,gender\n1,Male\n")
    result = inbox.scan_inbox(settings, spec, NOW)
    assert result.run_requests == []
    rejected = settings.inbox / inbox.REJECTED
    assert (rejected / "broken.csv").is_file()
    reason = (rejected / "broken.csv.reason.txt").read_text()
    assert "Churn" in reason and "missing required column" in reason
    assert inbox.scan_inbox(settings, spec, NOW).run_requests == []


def test_files_whose_names_clash_are_all_kept(settings):
    """Names that sanitize to one batch key in the same scan, and a rejected name seen again,
    get a counter: no batch or rejected file overwrites another."""
    spec = load_spec(DEFAULT_SPEC, settings.home)
    settings.inbox.mkdir(parents=True)
    for name, customer in (("a b.csv", "1"), ("a_b.csv", "2")):
        (settings.inbox / name).write_text(f"{TELCO_HEADER}\n{telco_row(customer)}\n")
    keys = [r.partition_key for r in inbox.scan_inbox(settings, spec, NOW).run_requests]
    assert len(set(keys)) == 2
    kept = {(settings.home / "batches" / key).read_text().splitlines()[1][:1] for key in keys}
    assert kept == {"1", "2"}
    for reason in ("first", "second"):
        (settings.inbox / "broken.csv").write_text(f"customerID,{reason}\n1,x\n")
        inbox.scan_inbox(settings, spec, NOW)
    rejected = settings.inbox / inbox.REJECTED
    headers = {p.read_text().splitlines()[0] for p in rejected.glob("broken*.csv")}
    assert headers == {"customerID,first", "customerID,second"}
    assert len(list(rejected.glob("broken*.reason.txt"))) == 2


def test_header_only_file_is_rejected(settings):
    spec = load_spec(DEFAULT_SPEC, settings.home)
    settings.inbox.mkdir(parents=True)
    (settings.inbox / "empty.csv").write_text(TELCO_HEADER + "\n")
    inbox.scan_inbox(settings, spec, NOW)
    reason = (settings.inbox / inbox.REJECTED / "empty.csv.reason.txt").read_text()
    assert "no data rows" in reason


def test_the_last_batch_of_a_scan_also_rebuilds_every_data_layer(settings):
    """Earlier batches of the same scan are ingested only; the last run, which leaves the queue
    after them, carries cleaning and features over all of them."""
    spec = load_spec(DEFAULT_SPEC, settings.home)
    settings.inbox.mkdir(parents=True)
    for name in ("a.csv", "b.csv"):
        (settings.inbox / name).write_text(f"{TELCO_HEADER}\n{telco_row(name)}\n")
    first, last = inbox.scan_inbox(settings, spec, NOW).run_requests
    assert first.asset_selection == [dg.AssetKey("raw_customers")]
    graph = build_definitions(settings).resolve_asset_graph()
    layers = dg.AssetSelection.groups("ingestion", "cleaning", "features").resolve(graph)
    assert set(last.asset_selection) == layers
    assert (first.partition_key, last.partition_key) == (
        "20261127T103000Z-a.csv",
        "20261127T103000Z-b.csv",
    )


def test_the_inbox_sensor_reads_the_settings_the_definitions_were_built_with(tmp_path):
    """Not the process environment (which names no state root here): the sensor gets the
    settings through the state resource."""
    settings = load_settings({"CHURN_HOME": str(tmp_path / "home")})
    settings.inbox.mkdir(parents=True)
    (settings.inbox / "new.csv").write_text(f"{TELCO_HEADER}\n{telco_row('1')}\n")
    defs = build_definitions(settings)
    # The resource the definitions hold, as the daemon passes it.
    state = {"state": defs.resources["state"]}
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources=state) as context,
    ):
        result = defs.get_sensor_def("inbox_sensor")(context)
    (request,) = result.run_requests
    assert request.partition_key.endswith("-new.csv")
    assert (settings.home / "batches" / request.partition_key).is_file()


def test_batch_keys_sort_by_arrival():
    early = inbox.batch_key(Path("a.csv"), NOW)
    later = inbox.batch_key(Path("a.csv"), NOW + dt.timedelta(seconds=1))
    assert batch_order(early) < batch_order(later)
    assert batch_order("base") == 0


def test_failed_run_opens_one_incident_and_success_resolves_it(settings):
    @dg.asset
    def flaky() -> None:
        raise RuntimeError("source unreachable")

    with dg.instance_for_test() as instance, OpsLog(settings) as ops:
        result = dg.materialize([flaky], instance=instance, raise_on_error=False)
        first = automation.record_run_failure(settings, instance, result.run_id, ops)
        second = automation.record_run_failure(settings, instance, result.run_id, ops)
        store = IncidentStore(settings)
        assert len(store.list(status="open")) == 1
        assert first[0].id == second[0].id
        assert first[0].priority == store.priority("high", "high")
        assert first[0].configuration_item == "asset:flaky"

        @dg.asset(name="flaky")
        def fixed() -> None:
            return None

        ok = dg.materialize([fixed], instance=instance)
        automation.resolve_after_success(settings, instance, ok.run_id, ops)
        assert store.list(status="open") == []
        assert store.get(first[0].id).status == "resolved"


def test_building_the_definitions_prints_no_superseded_api_warning(tmp_path):
    """Every process that loads the code location (each code server, each run) builds them:
    the freshness checks and their sensor use Dagster's superseded API on purpose, silently."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_definitions(load_settings({"CHURN_HOME": str(tmp_path)}))
    dagster_warnings = (dg.SupersessionWarning, dg.BetaWarning, dg.PreviewWarning)
    assert [str(w.message) for w in caught if issubclass(w.category, dagster_warnings)] == []
