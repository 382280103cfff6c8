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
        --binary target/release/grantmesh

It asserts nothing; it prints a Markdown table for docs/benchmarks.md.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/grantmesh")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

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
