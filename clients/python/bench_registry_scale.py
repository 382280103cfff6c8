#!/usr/bin/env python3
"""How one registry holds up with many instances: its RSS, and what a
ListInstances and a Watch snapshot cost it, at 1,000, 10,000 and 100,000
instances of one service (100,000 in all at the end).

Starts `grantmesh registry --insecure` (a release build by default) on a
free loopback port with the instance cap raised, registers the instances by
hand (pipelined, TTL one hour, so no heartbeat runs meanwhile), and for each
size measures from this process, a Python grpcio client:

- the registry's RSS (VmRSS) after the registrations;
- ListInstances of the service: mean wall time per call and the registry's
  CPU per call (utime + stime from /proc), over --calls calls;
- a Watch's snapshot: the time until its last part, and the registry's
  CPU, over half as many watches.

    .tmp/pyenv/bin/python clients/python/bench_registry_scale.py \
        --binary target/release/grantmesh [--etcd /usr/bin/etcd --sizes 1000,10000]

With --etcd PATH it also starts that etcd (a throwaway member on free
loopback ports), puts the same instances under a key prefix (each value the
instance's encoded bytes, about what the registry holds), and times a prefix
Range (serializable, etcd's cheapest read) on the same client the same way,
alternating the two --rounds times: the ratio etcd / registry is how many
times faster ListInstances is.

It asserts nothing; it prints Markdown tables for docs/benchmarks.md.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from grantmesh.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
BIG = 512 * 1024 * 1024


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_registry(binary, cap):
    proc = subprocess.Popen(
        [binary, "registry", "--insecure", "--listen", "127.0.0.1:0", "--warmup", "0s",
         "--max-instances-per-service", str(cap)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "GRANTMESH_LOG": "error"},
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the registry did not start: {line!r}")
    return proc, line[len("listening on "):]


def instance(service, n):
    return registry_pb2.Instance(
        id=f"{service}-{n:06d}",
        service=service,
        address=f"https://10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}:7200",
        labels={"metrics": f"http://10.0.{n // 256 % 256}.{n % 256}:9200/metrics", "zone": "a"},
        ttl=duration_pb2.Duration(seconds=3600),
    )


def register(stub, service, start, stop, window=512):
    pending = []
    for n in range(start, stop):
        pending.append(stub.Register.future(
            registry_pb2.RegisterRequest(instance=instance(service, n)), timeout=60))
        if len(pending) >= window:
            for f in pending:
                f.result()
            pending = []
    for f in pending:
        f.result()


def list_cost(stub, pid, service, calls):
    stub.ListInstances(registry_pb2.ListInstancesRequest(service=service), timeout=60)
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    for _ in range(calls):
        reply = stub.ListInstances(registry_pb2.ListInstancesRequest(service=service), timeout=60)
    wall = time.perf_counter() - wall
    cpu = cpu_seconds(pid) - cpu
    return len(reply.instances), wall / calls * 1e3, cpu / calls * 1e3


def watch_cost(stub, pid, service, times):
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    for _ in range(times):
        stream = stub.Watch(registry_pb2.WatchRequest(service=service), timeout=120)
        seen = 0
        for event in stream:
            seen += len(event.instances)
            if not event.more:
                break
        stream.cancel()
    wall = time.perf_counter() - wall
    return seen, wall / times * 1e3, (cpu_seconds(pid) - cpu) / times * 1e3


ETCD_PROTO = """
syntax = "proto3";
package etcdserverpb;
message ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4; }
message KeyValue { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4; bytes value = 5; int64 lease = 6; }
message RangeRequest { bytes key = 1; bytes range_end = 2; int64 limit = 3; int64 revision = 4; int32 sort_order = 5;
  int32 sort_target = 6; bool serializable = 7; bool keys_only = 8; bool count_only = 9; }
message RangeResponse { ResponseHeader header = 1; repeated KeyValue kvs = 2; bool more = 3; int64 count = 4; }
message PutRequest { bytes key = 1; bytes value = 2; int64 lease = 3; bool prev_kv = 4; bool ignore_value = 5; bool ignore_lease = 6; }
message PutResponse { ResponseHeader header = 1; }
service KV { rpc Range(RangeRequest) returns (RangeResponse); rpc Put(PutRequest) returns (PutResponse); }
"""


def etcd_stubs(workdir):
    """etcd's KV service (the messages it needs, by etcd's field numbers), compiled here."""
    from grpc_tools import protoc
    (workdir / "etcd_kv.proto").write_text(ETCD_PROTO)
    code = protoc.main(["protoc", f"-I{workdir}", f"--python_out={workdir}",
                        f"--grpc_python_out={workdir}", str(workdir / "etcd_kv.proto")])
    if code != 0:
        raise SystemExit("could not compile the etcd KV stubs")
    sys.path.insert(0, str(workdir))
    import etcd_kv_pb2
    import etcd_kv_pb2_grpc
    return etcd_kv_pb2, etcd_kv_pb2_grpc


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(path, workdir):
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [path, "--name", "bench", "--data-dir", str(workdir / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
         "--max-request-bytes", str(16 * 1024 * 1024),
         "--quota-backend-bytes", str(8 * 1024 * 1024 * 1024)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "ETCD_UNSUPPORTED_ARCH": os.uname().machine},
    )
    return proc, f"127.0.0.1:{client}"


def etcd_put(kv, pb, stub, start, stop, window=512):
    pending = []
    for n in range(start, stop):
        value = instance("scale", n).SerializeToString()
        pending.append(stub.Put.future(pb.PutRequest(key=f"/scale/{n:06d}".encode(), value=value), timeout=60))
        if len(pending) >= window:
            for f in pending:
                f.result()
            pending = []
    for f in pending:
        f.result()


def etcd_range_cost(pb, stub, pid, calls, decode):
    """A prefix Range; with `decode`, each value also parsed into an Instance,
    as a client must before it can use what it listed."""
    request = pb.RangeRequest(key=b"/scale/", range_end=b"/scale0", serializable=True)
    stub.Range(request, timeout=60)
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    for _ in range(calls):
        reply = stub.Range(request, timeout=60)
        if decode:
            [registry_pb2.Instance.FromString(kv.value) for kv in reply.kvs]
    wall = time.perf_counter() - wall
    return len(reply.kvs), wall / calls * 1e3, (cpu_seconds(pid) - cpu) / calls * 1e3


def compare_with_etcd(args, sizes):
    import tempfile
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="grantmesh-etcd-bench-"))
    pb, pb_grpc = etcd_stubs(workdir)
    registry, addr = start_registry(args.binary, max(sizes))
    etcd, etcd_addr = start_etcd(args.etcd, workdir)
    options = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)]
    try:
        reg = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(addr, options=options))
        kv = pb_grpc.KVStub(grpc.insecure_channel(etcd_addr, options=options))
        for _ in range(100):
            try:
                kv.Range(pb.RangeRequest(key=b"/"), timeout=1)
                break
            except grpc.RpcError:
                time.sleep(0.1)
        rows = []
        done = 0
        for size in sizes:
            register(reg, "scale", done, size)
            etcd_put(None, pb, kv, done, size)
            done = size
            cells = {"registry": [], "etcd": [], "etcd+decode": []}
            for round_ in range(args.rounds):
                order = list(cells) if round_ % 2 == 0 else list(reversed(cells))
                for who in order:
                    if who == "registry":
                        n, wall, cpu = list_cost(reg, registry.pid, "scale", args.calls)
                    else:
                        n, wall, cpu = etcd_range_cost(pb, kv, etcd.pid, args.calls, who == "etcd+decode")
                    assert n == size, (who, n, size)
                    cells[who].append((wall, cpu))
            rows.append((size, cells))
            print(f"  {size}: compared", flush=True)
        print()
        print("| instances | ListInstances wall | registry CPU per reply | etcd Range wall | etcd CPU per reply "
              "| etcd / registry (wall) | per round | Range + decoding the values, wall | its ratio |")
        print("| --: | --: | --: | --: | --: | --: | --: | --: | --: |")
        for size, cells in rows:
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            r_wall, r_cpu = mean([c[0] for c in cells["registry"]]), mean([c[1] for c in cells["registry"]])
            e_wall, e_cpu = mean([c[0] for c in cells["etcd"]]), mean([c[1] for c in cells["etcd"]])
            d_wall = mean([c[0] for c in cells["etcd+decode"]])
            per_round = [e[0] / r[0] for r, e in zip(cells["registry"], cells["etcd"])]
            print(f"| {size:,} | {r_wall:.2f} ms | {r_cpu:.2f} ms | {e_wall:.2f} ms | {e_cpu:.2f} ms "
                  f"| **{e_wall / r_wall:.2f}** | {min(per_round):.2f}–{max(per_round):.2f} "
                  f"| {d_wall:.2f} ms | {d_wall / r_wall:.2f} |")
    finally:
        for proc in (registry, etcd):
            proc.terminate()
            proc.wait(timeout=15)
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/grantmesh")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--etcd", help="an etcd binary to compare ListInstances with (e.g. /usr/bin/etcd)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.etcd:
        compare_with_etcd(args, sizes)
        return

    proc, addr = start_registry(args.binary, max(sizes))
    try:
        channel = grpc.insecure_channel(addr, options=[
            ("grpc.max_receive_message_length", BIG),
            ("grpc.max_send_message_length", BIG),
        ])
        stub = registry_pb2_grpc.RegistryStub(channel)
        print(f"registry pid {proc.pid} at {addr}; RSS {rss_mib(proc.pid):.0f} MiB empty")
        rows = []
        registered = 0
        for size in sizes:
            t = time.perf_counter()
            register(stub, "scale", registered, size)
            took = time.perf_counter() - t
            rate = (size - registered) / took
            registered = size
            rss = rss_mib(proc.pid)
            listed, list_ms, list_cpu = list_cost(stub, proc.pid, "scale", args.calls)
            watched, watch_ms, watch_cpu = watch_cost(stub, proc.pid, "scale", max(3, args.calls // 2))
            assert listed == size and watched == size, (listed, watched, size)
            rows.append((size, rss, rate, list_ms, list_cpu, watch_ms, watch_cpu))
            print(f"  {size}: done", flush=True)
        print()
        print("| instances | registry RSS | registrations/s | ListInstances wall | registry CPU per ListInstances "
              "| Watch snapshot wall | registry CPU per snapshot |")
        print("| --: | --: | --: | --: | --: | --: | --: |")
        for size, rss, rate, list_ms, list_cpu, watch_ms, watch_cpu in rows:
            print(f"| {size:,} | {rss:.0f} MiB | {rate:,.0f} | {list_ms:.1f} ms | {list_cpu:.1f} ms "
                  f"| {watch_ms:.1f} ms | {watch_cpu:.1f} ms |")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


if __name__ == "__main__":
    main()
