"""Ingest + cluster a simulated fleet of 1,000,000 devices x 7 daily reports from the object store.

Prints and saves (bench/results/fleet_scale.json) the wall time and peak memory of the two
stages. The fleet is simulated and uploaded first (not timed); the stages then run in a fresh
child process, so its peak RSS is theirs alone. Goal on a 2-core machine: <= 60 s, <= 4 GiB, and
the clusters recovering the hidden groups (adjusted Rand index ~0.99) with no device of the
clean simulated fleet set aside as an outlier (`devices_set_aside`, per reason in `set_aside`).

    python bench/fleet_scale.py [--devices 1000000] [--days 7]

Uses the configured object store (HDAP_S3_*), or starts a throwaway embedded one.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "fleet_scale.json"


def measure(telemetry_uri: str, truth_uri: str, sku: str, as_of: str) -> None:
    """The measured part, run in the child: ingest then cluster, timed separately."""
    import pyarrow as pa
    from sklearn.metrics import adjusted_rand_score

    from hdap.fleet.cluster import cluster_devices
    from hdap.fleet.ingest import ingest_telemetry
    from hdap.stages.cluster import ClusterConfig
    from hdap.stages.ingest import IngestConfig
    from hdap.store import ObjectStore

    store = ObjectStore.from_environment()
    start = time.perf_counter()
    ingested = ingest_telemetry(store, IngestConfig(telemetry_uri, sku, as_of=datetime.fromisoformat(as_of)))
    ingest_s = time.perf_counter() - start
    clustering = cluster_devices(ingested.features, ClusterConfig(seed=0))
    total_s = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux

    truth = pa.concat_tables([store.get_table(o.uri) for o in store.list(truth_uri)])
    groups = dict(zip(truth.column("device_id").to_pylist(), truth.column("group").to_pylist()))
    ids = clustering.assignments.column("device_id").to_pylist()
    ari = adjusted_rand_score([groups[i] for i in ids], clustering.assignments.column("cluster").to_numpy())
    print(json.dumps({
        "rows": ingested.rows_read,
        "devices": ingested.features.num_rows,
        "ingest_s": round(ingest_s, 1),
        "cluster_s": round(total_s - ingest_s, 1),
        "total_s": round(total_s, 1),
        "peak_rss_gib": round(peak_gib, 2),
        "k": clustering.k,
        "algorithm": clustering.algorithm,
        "adjusted_rand_index": round(float(ari), 4),
        "devices_set_aside": sum(clustering.set_aside.values()),
        "set_aside": clustering.set_aside,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--sku", default="jetson-xavier-nx")
    parser.add_argument("--measure", nargs=4, metavar=("TELEMETRY", "TRUTH", "SKU", "AS_OF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return

    import os

    from hdap.embedded_store import EmbeddedStore
    from hdap.fleet.simulate import SimulationConfig, simulate_fleet
    from hdap.store import ObjectStore, StoreConfig

    embedded = None
    if not os.environ.get("HDAP_S3_ENDPOINT"):
        embedded = EmbeddedStore(Path(tempfile.mkdtemp(prefix="hdap-bench-")))
        os.environ.update(embedded.up().as_environment())
    try:
        store = ObjectStore(StoreConfig.from_environment())
        end = datetime(2026, 11, 1, tzinfo=timezone.utc)
        prefix = f"s3://hdap-bench/fleet-{args.devices}x{args.days}"
        config = SimulationConfig(sku=args.sku, devices=args.devices, days=args.days, seed=0, end=end,
                                  telemetry_uri=f"{prefix}/telemetry", truth_uri=f"{prefix}/truth")
        if not (store.client.bucket_exists("hdap-bench") and store.list(config.telemetry_uri)):
            start = time.perf_counter()
            simulate_fleet(store, config)
            print(f"simulated and uploaded {args.devices:,} devices x {args.days} days in {time.perf_counter() - start:.0f} s")
        objects = store.list(config.telemetry_uri)
        stored_mb = sum(o.size for o in objects) / 1e6
        as_of = (end + timedelta(minutes=1)).isoformat()
        child = subprocess.run(
            [sys.executable, __file__, "--measure", config.telemetry_uri, config.truth_uri, args.sku, as_of],
            capture_output=True, text=True, check=True,
        )
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if embedded is not None:
            embedded.down()
    figures |= {
        "devices_simulated": args.devices,
        "days": args.days,
        "telemetry_objects": len(objects),
        "telemetry_mb": round(stored_mb, 1),
        "goal": "<= 60 s and <= 4 GiB",
        "goal_met": figures["total_s"] <= 60 and figures["peak_rss_gib"] <= 4,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "python bench/fleet_scale.py",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"saved to {RESULTS}")


if __name__ == "__main__":
    main()
