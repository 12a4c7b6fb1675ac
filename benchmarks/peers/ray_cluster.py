"""A multi-node Ray cluster on this machine, in a process of its own, for ``squishy serve --ray``.

    python -m peers.ray_cluster --nodes 2 --cpus-per-node 1

A head that offers no CPUs (it runs Ray's control plane only) and ``--nodes`` nodes of
``--cpus-per-node`` CPUs each (``ray.cluster_utils.Cluster``: one raylet per node, the nodes share this
machine's cores). It prints ``address HOST:PORT`` once every node is up, and runs until SIGTERM/SIGINT or
until its standard input closes. Being its own process, everything Ray starts (GCS, raylets, the slots'
actors) is in its process tree, so a benchmark can count that CPU and memory beside the server's.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

# Ray reads these once per process; the server that connects inherits the benchmark's environment.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.cluster_utils import Cluster

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # per node; this machine has 24 GiB, the batches need little


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False},
    )
    done = threading.Event()
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=args.cpus_per_node, object_store_memory=OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        print(f"address {cluster.address}", flush=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: done.set())
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
