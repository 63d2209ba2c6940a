"""A Ray cluster on 127.0.0.1, for the topology test: a head with no CPU and N one-CPU worker
nodes, built with ``ray.cluster_utils.Cluster`` in this process (under
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray binds every server of every node to 127.0.0.1 and
advertises that address; ``ray start`` listens on every interface whatever its flags).

Run as its own process, so that the test's own process holds no Ray state::

    python ray_cluster.py FOLDER --workers 2

It writes ``FOLDER/cluster.json`` (the head's address and each worker node's raylet pid) once
every node is up, then removes worker node ``n`` when a file ``FOLDER/remove-n`` appears (SIGTERM
to its processes, SIGKILL after a grace: what ``docker compose stop`` does) and writes
``FOLDER/removed-n``; when a file ``FOLDER/add-n`` appears it starts a new one-CPU worker node
(number ``n``, counting on from the first ones) and writes ``FOLDER/added-n`` once it is up.
It shuts the cluster down on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        sys.exit("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is required: Ray binds 127.0.0.1 only then")

    from ray._common.utils import get_default_ray_temp_dir
    from ray.cluster_utils import Cluster

    # the cluster's address file (for ``ray.init()`` without an address): under $RAY_TMPDIR
    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 0,
            "temp_dir": args.temp_dir,
            "include_dashboard": False,
            # a lost node is declared dead within ~3 s
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    workers = [cluster.add_node(num_cpus=1) for _ in range(args.workers)]
    cluster.wait_for_nodes()
    raylets = [node.all_processes["raylet"][0].process.pid for node in workers]
    info = {"address": cluster.address, "raylets": raylets}
    tmp = args.folder / "cluster.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.rename(args.folder / "cluster.json")
    print(f"cluster up: {json.dumps(info)}", flush=True)
    try:
        while not stopping:
            if (args.folder / f"add-{len(workers) + 1}").exists():
                workers.append(cluster.add_node(num_cpus=1))
                cluster.wait_for_nodes()
                (args.folder / f"added-{len(workers)}").write_text("")
                print(f"worker node {len(workers)} added", flush=True)
            for n, node in enumerate(workers, start=1):
                if (args.folder / f"remove-{n}").exists() and node in cluster.worker_nodes:
                    cluster.remove_node(node, allow_graceful=True)
                    (args.folder / f"removed-{n}").write_text("")
                    print(f"worker node {n} removed", flush=True)
            time.sleep(0.2)
    finally:
        cluster.shutdown()
        print("cluster shut down", flush=True)


if __name__ == "__main__":
    main()
