#!/usr/bin/env python3
"""A small grantmesh client built on the generated Python stubs.

It doubles as an example of calling grantmesh from Python and as a CLI for
poking at a running mesh. Every subcommand is a thin wrapper around a plain
function (``list_instances``, ``register``, ``ping``, ``health``, ``watch``,
``run_flow``) that takes a ``grpc.Channel`` and returns plain dicts, so tests
can import and call them directly; ``open_channel(target, Tls(...) | None)``
makes the channel.

Setup (once; generates the stubs and prints the venv's bin dir)::

    BIN=$(scripts/python-env | tail -1)

A grantmesh mesh speaks TLS with its own CA, so every command needs that CA
(``--ca PATH`` or ``GRANTMESH_CA``); for ``grantmesh dev`` it is
``${GRANTMESH_DATA_DIR:-$HOME/.local/share/grantmesh}/tls/ca.pem``. A mesh
started with ``--insecure`` is reached with ``--plaintext`` instead. Without
either the client refuses to guess and says what is missing. Use::

    export GRANTMESH_CA=${GRANTMESH_DATA_DIR:-$HOME/.local/share/grantmesh}/tls/ca.pem
    "$BIN/python" clients/python/grantmesh_client.py list-instances --registry 127.0.0.1:7000
    "$BIN/python" clients/python/grantmesh_client.py ping --target 127.0.0.1:7000 --service registry
    "$BIN/python" clients/python/grantmesh_client.py health --target 127.0.0.1:7000
    "$BIN/python" clients/python/grantmesh_client.py watch --registry 127.0.0.1:7000 --service college --events 3
    "$BIN/python" clients/python/grantmesh_client.py flow --agency 127.0.0.1:7100 --college 127.0.0.1:7200

``flow`` signs a researcher up, so it reads the code the college mailed from
the colleges' outbox (``--outbox DIR``; ``grantmesh dev`` keeps it in
``${GRANTMESH_DATA_DIR:-$HOME/.local/share/grantmesh}/mail``, which is the
default); ``mailed_code`` reads an outbox or a Maildir.

Researchers need only the CA (they authenticate with a bearer token); a mesh
member's certificate (``--cert PATH --key PATH``, or ``GRANTMESH_CERT`` /
``GRANTMESH_KEY``) is presented as the client certificate, which the
registry requires for Register/Heartbeat/KeepAlive/Deregister.

Targets are ``HOST:PORT``; the ``https://`` (or, on an ``--insecure`` mesh,
``http://``) prefix that instances register under is accepted and stripped,
and must agree with the choice of TLS or plaintext. The server's certificate
must name the host dialled (grantmesh certificates name ``127.0.0.1`` and
``localhost`` unless issued with other names).

Output is JSON (one object per line) on stdout; errors go to stderr. Exit
status: 0 on success, 1 when an RPC fails or a check does not hold (``health``:
not SERVING; ``flow``: an invariant failed), 2 for usage errors, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

# The generated modules import each other as ``grantmesh.v1.*``: make the
# directory holding the ``grantmesh`` package importable wherever we run from.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:
    import grpc
    from google.protobuf import duration_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from grantmesh.v1 import (
        agency_pb2,
        agency_pb2_grpc,
        college_pb2,
        college_pb2_grpc,
        common_pb2,
        registry_pb2,
        registry_pb2_grpc,
    )
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"grantmesh_client: {exc}\n"
        "Generate the stubs and use the tool venv first:\n"
        "    BIN=$(scripts/python-env | tail -1)\n"
        '    "$BIN/python" clients/python/grantmesh_client.py --help\n'
    )
    raise SystemExit(1)

DEFAULT_TIMEOUT = 10.0
"""Deadline, in seconds, for each unary call."""

SERVICES = ("registry", "agency", "college")


# --------------------------------------------------------------------------
# Channels and metadata
# --------------------------------------------------------------------------


class UsageError(Exception):
    """The command line or environment does not say how to connect (exit 2)."""


@dataclass(frozen=True)
class Tls:
    """What a TLS channel needs: the mesh CA and, for a mesh member, its
    certificate and key (PEM bytes).

    Researchers need only ``ca``; the registry takes Register, Heartbeat,
    KeepAlive and Deregister only from a client certificate naming the
    service being registered.
    """

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str, cert: str | None = None, key: str | None = None) -> "Tls":
        """Reads the PEM files; raises ``UsageError`` naming a file that cannot be read."""
        if (cert is None) != (key is None):
            raise UsageError("--cert and --key go together: a client certificate needs its private key")
        return cls(
            ca=_read_pem("--ca", ca),
            cert=_read_pem("--cert", cert) if cert else None,
            key=_read_pem("--key", key) if key else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read_pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror or err}") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"{flag} {path}: not a PEM file")
    return data


def open_channel(target: str, tls: Tls | None) -> grpc.Channel:
    """Opens a channel to ``HOST:PORT`` (or ``https://HOST:PORT``, ``http://HOST:PORT``).

    ``tls`` is the mesh CA (and optionally a client certificate); ``None``
    means plaintext, for a mesh started with ``--insecure``. A URL scheme
    that disagrees with that choice is a ``UsageError``, not a silent
    downgrade. Use it as a context manager so the channel is closed::

        tls = Tls.from_files(os.environ["GRANTMESH_CA"])
        with open_channel("127.0.0.1:7000", tls) as ch:
            print(list_instances(ch))
    """
    scheme, sep, rest = target.partition("://")
    if sep:
        if scheme not in ("http", "https"):
            raise UsageError(f"{target}: expected HOST:PORT, https://HOST:PORT or http://HOST:PORT")
        if scheme == "https" and tls is None:
            raise UsageError(f"{target} is a TLS address: give the mesh CA with --ca (or GRANTMESH_CA), not --plaintext")
        if scheme == "http" and tls is not None:
            raise UsageError(f"{target} is a plaintext address: a mesh started with --insecure needs --plaintext")
        target = rest
    target = _strip_path(target)
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials())


def _strip_path(target: str) -> str:
    return target.split("/", 1)[0]


def dev_ca_path() -> str:
    """Where ``grantmesh dev`` writes its mesh CA."""
    data = os.environ.get("GRANTMESH_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share"), "grantmesh"
    )
    return os.path.join(data, "tls", "ca.pem")


def tls_from_args(args: argparse.Namespace) -> Tls | None:
    """The ``Tls`` the connection options ask for, ``None`` for ``--plaintext``.

    TLS when ``--ca``/``GRANTMESH_CA`` is given; plaintext only when asked
    for; otherwise a ``UsageError`` saying what is missing.
    """
    if args.plaintext:
        given = [flag for flag, value in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)) if value]
        if given:
            raise UsageError(
                f"--plaintext contradicts {', '.join(given)} (set from the flag or GRANTMESH_* environment): "
                "choose TLS or plaintext"
            )
        return None
    if not args.ca:
        if args.cert or args.key:
            raise UsageError("--cert/--key need the mesh CA as well: add --ca PATH (or set GRANTMESH_CA)")
        dev = dev_ca_path()
        hint = f" ({dev} exists)" if os.path.exists(dev) else ""
        raise UsageError(
            "no mesh CA: grantmesh serves TLS with its own CA, so pass --ca PATH or set GRANTMESH_CA "
            f"(for `grantmesh dev` it is {dev}{hint}); use --plaintext only for a mesh started with --insecure"
        )
    return Tls.from_files(args.ca, args.cert, args.key)


def bearer(token: str) -> list[tuple[str, str]]:
    """Call metadata carrying a College/Login token (keys must be lowercase)."""
    return [("authorization", f"Bearer {token}")]


# --------------------------------------------------------------------------
# Message -> dict helpers (explicit, so empty fields are kept and output is
# stable across protobuf versions)
# --------------------------------------------------------------------------


def instance_to_dict(inst: registry_pb2.Instance) -> dict[str, Any]:
    return {
        "id": inst.id,
        "service": inst.service,
        "address": inst.address,
        "labels": dict(sorted(inst.labels.items())),
    }


def watch_event_to_dict(ev: registry_pb2.WatchEvent) -> dict[str, Any]:
    return {
        "kind": registry_pb2.WatchEvent.Kind.Name(ev.kind),
        "revision": ev.revision,
        "instance_ids": [i.id for i in ev.instances],
    }


def ping_reply_to_dict(reply: common_pb2.PingReply) -> dict[str, Any]:
    return {"message": reply.message, "instance_id": reply.instance_id, "service": reply.service}


def proposal_to_dict(p: agency_pb2.Proposal) -> dict[str, Any]:
    return {
        "proposal_id": p.proposal_id,
        "agency": p.agency,
        "decision": agency_pb2.Proposal.Decision.Name(p.decision),
        "reason": p.reason,
        "account_id": p.account_id,
        "requested_amount_minor": p.requested_amount_minor,
        "duration_days": p.duration_days,
    }


def transaction_to_dict(t: college_pb2.Transaction) -> dict[str, Any]:
    return {
        "transaction_id": t.transaction_id,
        "amount_minor": t.amount_minor,
        "idempotency_key": t.idempotency_key,
        "balance_after_minor": t.balance_after_minor,
    }


# --------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------


def list_instances(channel: grpc.Channel, service: str = "", timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """``Registry/ListInstances``: live instances of ``service`` (all when empty)."""
    stub = registry_pb2_grpc.RegistryStub(channel)
    reply = stub.ListInstances(registry_pb2.ListInstancesRequest(service=service), timeout=timeout)
    return [instance_to_dict(i) for i in reply.instances]


def register(
    channel: grpc.Channel,
    service: str,
    instance_id: str,
    address: str,
    ttl_seconds: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """``Registry/Register`` one instance by hand; returns the TTL applied and the revision.

    On a TLS mesh the channel must present a client certificate naming
    ``service`` (``Tls(ca, cert, key)``), else the registry answers
    UNAUTHENTICATED (no certificate) or PERMISSION_DENIED (another service's).
    The registration lapses after its TTL unless renewed.
    """
    instance = registry_pb2.Instance(id=instance_id, service=service, address=address)
    if ttl_seconds is not None:
        instance.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
    stub = registry_pb2_grpc.RegistryStub(channel)
    reply = stub.Register(registry_pb2.RegisterRequest(instance=instance), timeout=timeout)
    return {"ttl_seconds": reply.ttl.seconds + reply.ttl.nanos / 1e9, "revision": reply.revision}


_PING_STUBS = {
    "registry": registry_pb2_grpc.RegistryStub,
    "agency": agency_pb2_grpc.AgencyStub,
    "college": college_pb2_grpc.CollegeStub,
}


def ping(
    channel: grpc.Channel,
    service: str,
    message: str = "",
    delay_ms: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """``<Service>/Ping`` on ``registry``, ``agency`` or ``college``.

    All three share ``grantmesh.v1.PingRequest``/``PingReply`` from common.proto.
    """
    try:
        stub = _PING_STUBS[service](channel)
    except KeyError:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}") from None
    reply = stub.Ping(common_pb2.PingRequest(message=message, delay_ms=delay_ms), timeout=timeout)
    return ping_reply_to_dict(reply)


def health(channel: grpc.Channel, service: str = "", timeout: float = DEFAULT_TIMEOUT) -> str:
    """``grpc.health.v1.Health/Check``; returns the status name, e.g. ``"SERVING"``.

    An empty ``service`` asks about the server as a whole. A service the server
    does not know (NOT_FOUND) is reported as ``"SERVICE_UNKNOWN"``.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        raise
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def join_snapshot_parts(
    events: Iterable[registry_pb2.WatchEvent],
) -> Iterator[registry_pb2.WatchEvent]:
    """Yields the events of a Watch stream with each snapshot whole.

    The registry sends a snapshot in parts of the same revision, all but the
    last with ``more`` set; the live set is their union. Parts are held here
    until the last one, then yielded as one SNAPSHOT; changes pass through.
    """
    pending: registry_pb2.WatchEvent | None = None
    for ev in events:
        if ev.kind != registry_pb2.WatchEvent.KIND_SNAPSHOT:
            pending = None  # the registry sends no change amid a snapshot's parts
            yield ev
            continue
        if pending is not None and pending.revision == ev.revision:
            pending.instances.extend(ev.instances)
            pending.more = ev.more
        else:
            pending = ev
        if not pending.more:
            yield pending
            pending = None


def watch(channel: grpc.Channel, service: str, events: int, timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Yields the first ``events`` events of ``Registry/Watch`` for ``service``.

    The first is the SNAPSHOT, whole (its parts joined). The stream is
    cancelled once enough have been read (or when the caller stops
    iterating). ``timeout`` bounds the whole stream; ``None`` waits
    indefinitely. Raises ``EOFError`` if the server ends the stream early.
    """
    stub = registry_pb2_grpc.RegistryStub(channel)
    call = stub.Watch(registry_pb2.WatchRequest(service=service), timeout=timeout)
    seen = 0
    try:
        for ev in join_snapshot_parts(call):
            seen += 1
            yield watch_event_to_dict(ev)
            if seen >= events:
                return
        raise EOFError(f"watch stream ended after {seen} of {events} events")
    finally:
        call.cancel()


class FlowError(Exception):
    """The grant flow could not proceed (e.g. the proposal was rejected)."""


CODE_LABEL = "Your verification code:"


def mailed_code(outbox: str, email: str, wait: float = 15.0) -> str:
    """The newest sign-up code mailed to ``email`` in ``outbox`` (a
    college's ``--mail-outbox``: one RFC 5322 file per message; or a Maildir,
    whose ``new``/``cur`` are read too), waited for up to ``wait`` seconds:
    a college mails a moment after it answers."""
    import time
    from email import message_from_binary_file
    from email import policy as mail_policy

    deadline = time.monotonic() + wait
    while True:
        found: list[tuple[float, str]] = []
        for folder in (outbox, os.path.join(outbox, "new"), os.path.join(outbox, "cur")):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".") or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    message = message_from_binary_file(f, policy=mail_policy.default)
                if str(message.get("To", "")).strip().lower().strip("<>") != email.lower():
                    continue
                body = message.get_body(preferencelist=("plain",))
                text = body.get_content() if body else ""
                for line in text.splitlines():
                    if line.strip().startswith(CODE_LABEL):
                        code = "".join(ch for ch in line.split(":", 1)[1] if ch.isdigit())
                        found.append((os.path.getmtime(path), code))
        if found:
            return max(found)[1]
        if time.monotonic() >= deadline:
            raise FlowError(f"no sign-up code for {email} reached {outbox} within {wait:.0f} s")
        time.sleep(0.1)


def default_outbox() -> str:
    """``grantmesh dev``'s outbox: ``$GRANTMESH_DATA_DIR/mail``, else
    ``~/.local/share/grantmesh/mail``."""
    data = os.environ.get("GRANTMESH_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "grantmesh"
    )
    return os.path.join(data, "mail")


def run_flow(
    agency: grpc.Channel,
    college: grpc.Channel,
    requested_amount_minor: int = 40_000_000,
    duration_days: int = 30,
    withdraw_minor: int = 1_000,
    timeout: float = DEFAULT_TIMEOUT,
    log=None,
    outbox: str | None = None,
) -> dict[str, Any]:
    """Runs the whole grant flow once and returns a summary with checked invariants.

    1. College/RegisterResearcher a fresh principal investigator (unique
       email), then College/VerifyEmail with the code mailed to it (read
       from ``outbox``) and the password, which logs in;
    2. College/Login for a bearer token, as a returning researcher;
    3. Agency/SubmitProposal with that token (``log`` gets the decision);
    4. College/GetAccount for the opened account;
    5. College/Withdraw ``withdraw_minor`` twice with one idempotency key
       (the second must be a replay of the first);
    6. College/GetAccount and College/ListTransactions (all pages);
    7. College/Refresh for a new token on the refresh token, then
       College/Logout, after which the token is refused (UNAUTHENTICATED).

    ``summary["ok"]`` is True iff every entry of ``summary["checks"]`` holds:
    the retry was replayed, the account was debited once, and
    ``balance == award - sum(journal)``. Raises ``FlowError`` when the
    proposal is not accepted, ``grpc.RpcError`` when a call fails.
    """
    agency_stub = agency_pb2_grpc.AgencyStub(agency)
    college_stub = college_pb2_grpc.CollegeStub(college)
    outbox = outbox or default_outbox()
    tag = uuid.uuid4().hex[:12]
    email = f"pi-{tag}@flow.grantmesh.test"
    password = f"pw-{uuid.uuid4().hex}"

    # Sign-up names no id (it would tell whether the email was taken); the
    # researcher exists once the mailed code comes back with the password.
    college_stub.RegisterResearcher(
        college_pb2.RegisterResearcherRequest(name=f"Flow PI {tag}", email=email, password=password),
        timeout=timeout,
    )
    code = mailed_code(outbox, email)
    college_stub.VerifyEmail(
        college_pb2.VerifyEmailRequest(email=email, code=code, password=password), timeout=timeout
    )
    login = college_stub.Login(college_pb2.LoginRequest(email=email, password=password), timeout=timeout)
    md = bearer(login.token)

    proposal = agency_stub.SubmitProposal(
        agency_pb2.SubmitProposalRequest(
            title=f"Flow check {tag}",
            description="End-to-end grant flow from grantmesh_client.py",
            requested_amount_minor=requested_amount_minor,
            duration_days=duration_days,
            idempotency_key=str(uuid.uuid4()),
        ),
        metadata=md,
        timeout=timeout,
    )
    decision = proposal_to_dict(proposal)
    if log:
        log(decision)
    if proposal.decision != agency_pb2.Proposal.DECISION_ACCEPTED:
        raise FlowError(f"proposal {proposal.proposal_id} not accepted: {decision['decision']} {proposal.reason!r}")
    if not proposal.account_id:
        raise FlowError(f"proposal {proposal.proposal_id} accepted without an account_id")

    account_id = proposal.account_id
    before = college_stub.GetAccount(college_pb2.GetAccountRequest(account_id=account_id), metadata=md, timeout=timeout)

    key = str(uuid.uuid4())
    wreq = college_pb2.WithdrawRequest(
        account_id=account_id, amount_minor=withdraw_minor, idempotency_key=key, memo="flow check"
    )
    first = college_stub.Withdraw(wreq, metadata=md, timeout=timeout)
    second = college_stub.Withdraw(wreq, metadata=md, timeout=timeout)

    after = college_stub.GetAccount(college_pb2.GetAccountRequest(account_id=account_id), metadata=md, timeout=timeout)
    journal = list_all_transactions(college_stub, account_id, md, timeout)
    journal_sum = sum(t.amount_minor for t in journal)
    with_key = [t for t in journal if t.idempotency_key == key]

    # The session: renewed with its refresh token, then ended.
    renewed = college_stub.Refresh(college_pb2.RefreshRequest(refresh_token=login.refresh_token), timeout=timeout)
    renewed_md = bearer(renewed.token)
    college_stub.WhoAmI(college_pb2.WhoAmIRequest(), metadata=renewed_md, timeout=timeout)
    college_stub.Logout(college_pb2.LogoutRequest(), metadata=renewed_md, timeout=timeout)
    try:
        college_stub.WhoAmI(college_pb2.WhoAmIRequest(), metadata=renewed_md, timeout=timeout)
        after_logout = "accepted"
    except grpc.RpcError as err:
        after_logout = err.code().name

    checks = [
        _check("award equals requested amount", after.award_minor == requested_amount_minor,
               f"award={after.award_minor} requested={requested_amount_minor}"),
        _check("new account starts at its award", before.balance_minor == before.award_minor,
               f"balance={before.balance_minor} award={before.award_minor}"),
        _check("first withdrawal not replayed", not first.replayed, f"replayed={first.replayed}"),
        _check("retry replayed", second.replayed, f"replayed={second.replayed}"),
        _check("retry returns the same transaction",
               first.transaction.transaction_id == second.transaction.transaction_id
               and first.balance_minor == second.balance_minor,
               f"{first.transaction.transaction_id}/{first.balance_minor} vs "
               f"{second.transaction.transaction_id}/{second.balance_minor}"),
        _check("debited once", after.balance_minor == before.balance_minor - withdraw_minor,
               f"before={before.balance_minor} after={after.balance_minor} amount={withdraw_minor}"),
        _check("one journal entry for the key", len(with_key) == 1, f"entries={len(with_key)}"),
        _check("balance == award - sum(journal)", after.balance_minor == after.award_minor - journal_sum,
               f"balance={after.balance_minor} award={after.award_minor} journal_sum={journal_sum}"),
        _check("the refresh token renewed the session", renewed.refresh_token != login.refresh_token,
               "a new refresh token"),
        _check("the token is refused after logout", after_logout == "UNAUTHENTICATED", after_logout),
    ]
    return {
        "ok": all(c["ok"] for c in checks),
        "researcher_id": login.researcher.researcher_id,
        "email": email,
        "proposal_id": proposal.proposal_id,
        "agency": proposal.agency,
        "decision": decision["decision"],
        "account_id": account_id,
        "award_minor": after.award_minor,
        "balance_before_minor": before.balance_minor,
        "balance_after_minor": after.balance_minor,
        "withdrawals": [
            {"replayed": r.replayed, "balance_minor": r.balance_minor, **transaction_to_dict(r.transaction)}
            for r in (first, second)
        ],
        "journal_count": len(journal),
        "journal_sum_minor": journal_sum,
        "checks": checks,
    }


def list_all_transactions(
    college_stub: college_pb2_grpc.CollegeStub,
    account_id: str,
    metadata: Sequence[tuple[str, str]],
    timeout: float = DEFAULT_TIMEOUT,
    max_pages: int = 1000,
) -> list[college_pb2.Transaction]:
    """``College/ListTransactions`` following ``next_page_token`` to the end."""
    out: list[college_pb2.Transaction] = []
    token = ""
    for _ in range(max_pages):
        reply = college_stub.ListTransactions(
            college_pb2.ListTransactionsRequest(account_id=account_id, page_size=500, page_token=token),
            metadata=metadata,
            timeout=timeout,
        )
        out.extend(reply.transactions)
        token = reply.next_page_token
        if not token:
            return out
    raise FlowError(f"ListTransactions did not finish within {max_pages} pages")


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


def _cmd_list_instances(args: argparse.Namespace) -> int:
    with open_channel(args.registry, args.tls) as ch:
        for inst in list_instances(ch, args.service, timeout=args.timeout):
            _emit(inst)
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    with open_channel(args.registry, args.tls) as ch:
        _emit(register(ch, args.service, args.id, args.address, ttl_seconds=args.ttl, timeout=args.timeout))
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    with open_channel(args.target, args.tls) as ch:
        _emit(ping(ch, args.service, message=args.message, delay_ms=args.delay_ms, timeout=args.timeout))
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    with open_channel(args.target, args.tls) as ch:
        status = health(ch, args.service, timeout=args.timeout)
    print(status, flush=True)
    return 0 if status == "SERVING" else 1


def _cmd_watch(args: argparse.Namespace) -> int:
    with open_channel(args.registry, args.tls) as ch:
        try:
            for ev in watch(ch, args.service, args.events, timeout=args.max_wait):
                _emit(ev)
        except EOFError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


def _cmd_flow(args: argparse.Namespace) -> int:
    with open_channel(args.agency, args.tls) as agency, open_channel(args.college, args.tls) as college:
        try:
            summary = run_flow(
                agency,
                college,
                requested_amount_minor=args.amount,
                duration_days=args.days,
                withdraw_minor=args.withdraw,
                timeout=args.timeout,
                log=lambda decision: _emit({"step": "proposal", **decision}),
                outbox=args.outbox,
            )
        except FlowError as err:
            _emit({"ok": False, "error": str(err)})
            return 1
    _emit(summary)
    for c in summary["checks"]:
        if not c["ok"]:
            print(f"invariant failed: {c['name']}: {c['detail']}", file=sys.stderr)
    return 0 if summary["ok"] else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _add_connection_options(p: argparse.ArgumentParser, top_level: bool) -> None:
    """``--ca``/``--cert``/``--key``/``--plaintext``, accepted before or after
    the command. Only the top level sets defaults (from the environment), so a
    subcommand does not overwrite what was given before it."""
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    g = p.add_argument_group("connection (TLS unless --plaintext)")
    g.add_argument("--ca", metavar="PATH", default=default(os.environ.get("GRANTMESH_CA") or None),
                   help="the mesh CA certificate to trust (env GRANTMESH_CA); required unless --plaintext")
    g.add_argument("--cert", metavar="PATH", default=default(os.environ.get("GRANTMESH_CERT") or None),
                   help="a mesh member's certificate, presented as the client certificate "
                   "(env GRANTMESH_CERT; e.g. to register by hand)")
    g.add_argument("--key", metavar="PATH", default=default(os.environ.get("GRANTMESH_KEY") or None),
                   help="the private key of --cert (env GRANTMESH_KEY)")
    g.add_argument("--plaintext", action="store_true", default=default(False),
                   help="no TLS: only for a mesh started with --insecure")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grantmesh_client.py",
        description="Example grantmesh client on the generated Python gRPC stubs. "
        "Prints JSON lines on stdout; exits 1 on RPC errors or failed checks.",
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="deadline in seconds for each unary call (default: %(default)s)")
    _add_connection_options(p, top_level=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list-instances", help="Registry/ListInstances: one JSON line per instance")
    s.add_argument("--registry", required=True, metavar="HOST:PORT")
    s.add_argument("--service", default="", help="only this service (default: every service)")
    _add_connection_options(s, top_level=False)
    s.set_defaults(func=_cmd_list_instances)

    s = sub.add_parser("register", help="Registry/Register by hand (needs --cert/--key naming the service)")
    s.add_argument("--registry", required=True, metavar="HOST:PORT")
    s.add_argument("--service", required=True)
    s.add_argument("--id", required=True, help="the instance id")
    s.add_argument("--address", required=True, metavar="URL", help="what clients dial, e.g. https://127.0.0.1:7299")
    s.add_argument("--ttl", type=_positive_int, default=None, metavar="SECONDS",
                   help="lease length (default: the registry's)")
    _add_connection_options(s, top_level=False)
    s.set_defaults(func=_cmd_register)

    s = sub.add_parser("ping", help="<Service>/Ping: print the reply as JSON")
    s.add_argument("--target", required=True, metavar="HOST:PORT")
    s.add_argument("--service", required=True, choices=SERVICES)
    s.add_argument("--message", default="", help="echoed back (default: empty)")
    s.add_argument("--delay-ms", type=int, default=0, help="ask the server to hold the call this long")
    _add_connection_options(s, top_level=False)
    s.set_defaults(func=_cmd_ping)

    s = sub.add_parser("health", help="grpc.health.v1 Check: print the status, exit 0 iff SERVING")
    s.add_argument("--target", required=True, metavar="HOST:PORT")
    s.add_argument("--service", default="", metavar="NAME",
                   help="e.g. grantmesh.v1.Registry (default: empty = the whole server)")
    _add_connection_options(s, top_level=False)
    s.set_defaults(func=_cmd_health)

    s = sub.add_parser("watch", help="Registry/Watch: print N events as JSON lines")
    s.add_argument("--registry", required=True, metavar="HOST:PORT")
    s.add_argument("--service", required=True)
    s.add_argument("--events", type=_positive_int, required=True, metavar="N")
    s.add_argument("--max-wait", type=float, default=None, metavar="SECONDS",
                   help="give up (DEADLINE_EXCEEDED) after this long (default: wait indefinitely)")
    _add_connection_options(s, top_level=False)
    s.set_defaults(func=_cmd_watch)

    s = sub.add_parser("flow", help="the whole grant flow, with invariant checks; JSON summary last")
    s.add_argument("--agency", required=True, metavar="HOST:PORT")
    s.add_argument("--college", required=True, metavar="HOST:PORT")
    s.add_argument("--amount", type=_positive_int, default=40_000_000,
                   help="requested minor units (default: %(default)s, 400,000.00: inside the default band)")
    s.add_argument("--days", type=_positive_int, default=30, help="duration in days (default: %(default)s)")
    s.add_argument("--withdraw", type=_positive_int, default=1_000, help="minor units per withdrawal (default: %(default)s)")
    s.add_argument("--outbox", metavar="DIR", default=os.environ.get("GRANTMESH_MAIL_OUTBOX") or None,
                   help="where the colleges keep the mail they send, to read the sign-up code from "
                   "(env GRANTMESH_MAIL_OUTBOX; default: grantmesh dev's, DATA_DIR/mail)")
    _add_connection_options(s, top_level=False)
    s.set_defaults(func=_cmd_flow)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.tls = tls_from_args(args)
        return args.func(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        print(f"error: {code.name if code else 'RPC'}: {details}", file=sys.stderr)
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"hint: {_unavailable_hint(args.tls)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `| head -1`
        return 0


def _unavailable_hint(tls: Tls | None) -> str:
    if tls is None:
        return "is the server running, and was it started with --insecure? A TLS mesh needs --ca instead of --plaintext"
    return ("is the server running, on TLS? Check that --ca is this mesh's CA and that the server's certificate "
            "names the host you dialled; a mesh started with --insecure needs --plaintext")


if __name__ == "__main__":
    sys.exit(main())
