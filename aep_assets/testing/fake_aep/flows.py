"""The fake Flow Service and ad-hoc dataset export: connections and flows looked up by name, and export
runs that report success (after one poll) or failure, calling `on_export` to write the files AEP would.

Part of `FakeAEP`; its state is `connections`, `flows`, `flow_kinds` and `runs`.
"""

from __future__ import annotations

import secrets

from aep_assets.testing.fake_aep.credentials import CLIENT_ID, GATEWAY, ORG_ID, SANDBOX, SANDBOX_ID, new_uuid
from aep_assets.testing.fake_aep.state import FakeState

FLOWS = "/data/foundation/flowservice"


class FakeFlowService(FakeState):
    """Flow Service and destinations (ad-hoc run) routes and handlers."""

    ROUTES = (
        ("GET", rf"{FLOWS}/(flows|connections|sourceConnections|targetConnections)", "list_flow_items"),
        ("POST", rf"{FLOWS}/(connections|sourceConnections|targetConnections|flows)", "create_flow_item"),
        ("GET", rf"{FLOWS}/runs/([^/]+)", "get_run"),
        ("POST", r"/data/core/activation/disflowprovider/adhocrun", "adhoc_run"),
    )

    def list_flow_items(self, kind, query, **_):
        store = self.flows if kind == "flows" else self.connections
        name = query.get("property", "").removeprefix("name==")
        found = [i for i in store.values() if i["name"] == name and self.flow_kinds[i["id"]] == kind]
        # a listed connection names its auth, never its credentials
        return 200, {"items": [{**i, "auth": {"specName": i["auth"]["specName"]}} if "auth" in i else i
                               for i in found]}

    def create_flow_item(self, kind, body, **_):
        item_id = new_uuid()
        now = next(self.clock)
        item = {**body, "id": item_id, "etag": f"\"{secrets.token_hex(4)}-0000-0200-0000\"", "state": "enabled",
                "description": body.get("description", ""), "imsOrgId": ORG_ID, "sandboxId": SANDBOX_ID,
                "sandboxName": SANDBOX, "createdBy": f"{CLIENT_ID}@AdobeID", "updatedBy": f"{CLIENT_ID}@AdobeID",
                "createdClient": CLIENT_ID, "updatedClient": CLIENT_ID}
        if kind == "flows":
            item["inheritedAttributes"] = {"properties": {"isDestinationFlow": True}}
        else:
            item.update(createdAt=now, updatedAt=now, version="\"0100\"")
        (self.flows if kind == "flows" else self.connections)[item_id] = item
        self.flow_kinds[item_id] = kind
        return 201, {"id": item_id, "etag": item["etag"]}

    def adhoc_run(self, body, headers, **_):
        assert headers["Accept"] == "application/vnd.adobe.adhoc.dataset.activation+json; version=1"
        destination = body["activationInfo"]["destinations"][0]
        if self.not_ready_answers:
            self.not_ready_answers -= 1
            return 400, {"code": "DEST-3009-400",
                         "message": "Following order ID(s) are not ready for dataset export, please wait for "
                                    f"10 minutes and retry: {destination['flowId']}"}
        run_id = new_uuid()
        dataset_id = destination["datasets"][0]["id"]
        self.runs[run_id] = {"id": run_id, "flowId": destination["flowId"], "dataset": dataset_id, "_polls": 0}
        return 200, {"destinations": [{"flowId": destination["flowId"], "datasets": [{
            "id": dataset_id, "statusURL": f"{GATEWAY}{FLOWS}/runs/{run_id}"}]}]}

    def get_run(self, run_id, **_):
        """A run of the dataset-export flow, its outcome in metrics.statusSummary ("Monitor dataflows")."""
        run = self.runs[run_id]
        run["_polls"] += 1
        done = run["_polls"] > 1
        if done and "_exported" not in run and self.export_outcome == "success":
            self.on_export(self.flows[run["flowId"]], run["dataset"])
            run["_exported"] = True
        summary = {"startedAtUTC": 1675807719411, **({"completedAtUTC": 1675807799416} if done else {})}
        status = {"status": self.export_outcome if done else "inProgress"}
        item = {"id": run_id, "flowId": run["flowId"], "sandboxName": SANDBOX, "imsOrgId": ORG_ID,
                "flowSpec": {"id": "269ba276-16fc-47db-92b0-c1049a3c131f", "version": "1.0"},
                "metrics": {"durationSummary": summary, "recordSummary": {"outputRecordCount": 0},
                            "statusSummary": status}}
        if done and self.export_outcome == "failed":
            item["activities"] = [{"id": "dataset-export", "statusSummary": {"status": "failed", "extensions": {
                "errors": [{"code": "CONNECTOR-2001-500", "message": "Access denied to the bucket path"}]}}}]
        return 200, {"items": [item]}

