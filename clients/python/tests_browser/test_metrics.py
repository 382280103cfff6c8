"""Every role's `/metrics`, parsed by Prometheus's own text-format parser
(`prometheus_client.parser`), moves with the calls made to the mesh.

The metrics endpoints are found as a scraper would find them: the registry's
from its flag, the others from the `metrics` label each instance registers.
Runs against the same mesh as the portal tests (conftest.py), before them
(file order), and makes its own researcher, so it depends on no other test.
"""

import pathlib
import sys
import time
import urllib.request
import uuid

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import grantmesh_client as gc  # noqa: E402
from grantmesh.v1 import agency_pb2, agency_pb2_grpc, college_pb2, college_pb2_grpc  # noqa: E402

# Bound on waiting for the registry to notice an instance come or go.
SETTLE = 15.0


def scrape(url):
    """{(sample name, sorted labels): value} of one endpoint, as Prometheus parses it."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.headers["content-type"].startswith("text/plain"), reply.headers
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(urls, name, **labels):
    """`name{labels}` summed over several endpoints (one per instance)."""
    return sum(value(scrape(url), name, **labels) for url in urls)


def metrics_urls(mesh, service):
    registry = grpc.insecure_channel(mesh.registry.removeprefix("http://"))
    instances = gc.list_instances(registry, service)
    assert instances, f"no {service} is registered"
    urls = [i["labels"].get("metrics") for i in instances]
    assert all(urls), f"every {service} registers its metrics endpoint: {instances}"
    return urls


def eventually(check, what):
    deadline = time.monotonic() + SETTLE
    while True:
        last = check()
        if last is True:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {SETTLE}s (last: {last})")
        time.sleep(0.1)


WITHDRAWALS = "grantmesh_college_withdrawals_total"
REQUESTS = "grpc_server_requests_total"
COLLEGE = "grantmesh.v1.College"


def test_counters_move_with_withdrawals_and_proposals(mesh):
    colleges = metrics_urls(mesh, "college")
    agencies = metrics_urls(mesh, "agency")

    def counts():
        return {
            "applied": total(colleges, WITHDRAWALS, outcome="applied", reason=""),
            "replayed": total(colleges, WITHDRAWALS, outcome="replayed", reason=""),
            "insufficient": total(colleges, WITHDRAWALS, outcome="refused",
                                  reason="insufficient_funds"),
            "withdraw ok": total(colleges, REQUESTS, service=COLLEGE, method="Withdraw",
                                 code="Ok"),
            "withdraw refused": total(colleges, REQUESTS, service=COLLEGE, method="Withdraw",
                                      code="FailedPrecondition"),
            "accepted": total(agencies, "grantmesh_agency_proposals_total",
                              decision="accepted"),
        }

    before = counts()
    registry = grpc.insecure_channel(mesh.registry.removeprefix("http://"))

    def dial(service, **labels):
        instance = next(i for i in gc.list_instances(registry, service)
                        if all(i["labels"].get(k) == v for k, v in labels.items()))
        return grpc.insecure_channel(instance["address"].removeprefix("http://"))

    college = college_pb2_grpc.CollegeStub(dial("college"))
    nsf = agency_pb2_grpc.AgencyStub(dial("agency", agency="nsf"))
    email, password = f"metrics-{uuid.uuid4().hex[:8]}@uni.edu", f"pw-{uuid.uuid4().hex}"
    college.RegisterResearcher(college_pb2.RegisterResearcherRequest(
        name="Metrics Reader", email=email, password=password), timeout=10)
    college.VerifyEmail(college_pb2.VerifyEmailRequest(
        email=email, code=gc.mailed_code(str(mesh.outbox), email), password=password), timeout=10)
    auth = gc.bearer(college.Login(college_pb2.LoginRequest(
        email=email, password=password), timeout=10).token)
    proposal = nsf.SubmitProposal(agency_pb2.SubmitProposalRequest(
        title="Counting things", requested_amount_minor=400_000, duration_days=30,
        idempotency_key=str(uuid.uuid4())), metadata=auth, timeout=10)
    assert proposal.account_id, proposal
    withdraw = college_pb2.WithdrawRequest(
        account_id=proposal.account_id, amount_minor=1_000, idempotency_key=str(uuid.uuid4()))
    assert not college.Withdraw(withdraw, metadata=auth, timeout=10).replayed
    assert college.Withdraw(withdraw, metadata=auth, timeout=10).replayed
    with pytest.raises(grpc.RpcError) as refused:
        college.Withdraw(college_pb2.WithdrawRequest(
            account_id=proposal.account_id, amount_minor=10_000_000,
            idempotency_key=str(uuid.uuid4())), metadata=auth, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    after = counts()
    moved = {name: after[name] - before[name] for name in before}
    assert moved == {
        "applied": 1,
        "replayed": 1,
        "insufficient": 1,
        "withdraw ok": 2,
        "withdraw refused": 1,
        "accepted": 1,
    }, (before, after)
    # Latencies are histograms Prometheus can read: one observation per call.
    samples = scrape(colleges[0])
    assert any(name == "grpc_server_request_duration_seconds_bucket"
               for name, _ in samples), "a latency histogram"
    assert any(name == "grantmesh_college_store_pool_max" for name, _ in samples)


def test_the_registry_counts_instances_as_they_come_and_go(mesh):
    registry = mesh.registry_metrics

    def instances(service):
        return value(scrape(registry), "grantmesh_registry_instances", service=service)

    assert instances("agency") == 2
    colleges = instances("college")

    def removals():
        return {reason: value(scrape(registry), "grantmesh_registry_removals_total",
                              reason=reason)
                for reason in ("deregistered", "keepalive_closed", "ttl_expired")}

    removed_before = removals()
    mesh.spawn_college("college-extra")
    eventually(lambda: instances("college") == colleges + 1 or instances("college"),
               "the new college is counted")
    mesh.terminate("college-extra")
    eventually(lambda: instances("college") == colleges or instances("college"),
               "the stopped college is no longer counted")
    moved = {reason: n - removed_before[reason] for reason, n in removals().items()}
    # A graceful stop deregisters before its KeepAlive stream closes
    # (discovery's Registrar::deregister): a departure, not a lost stream.
    assert moved == {"deregistered": 1, "keepalive_closed": 0, "ttl_expired": 0}, moved
