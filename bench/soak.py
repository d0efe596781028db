"""Soak: many concurrent writers upload telemetry while ingest runs over the same prefix.

A throwaway embedded store (SeaweedFS on 127.0.0.1, a free port, a temporary folder) receives
small telemetry objects from N writer threads for a bounded time, each writer acting as a device
agent: one Parquet object per report, valid under hdap's telemetry schema (rows made by the fleet
simulator), written through ObjectStore.put_table (so with hdap's sha256 metadata) under
<prefix>/<device id>/<timestamp ms>.parquet, as `hdap profile` writes a CPU device's row.
Meanwhile a child process runs the ingest stage (hdap.stages.ingest's run function) over the
prefix again and again. After the writers stop, one final ingest must read every uploaded
object: rows in == rows uploaded, nothing quarantined, nothing unreadable, nothing lost.

Recorded: uploads/s and bytes/s, upload latency p50/p99 (put_table: Parquet encoding, the bucket
check and the PUT, in a Python thread, so GIL waits are included), upload errors by kind, ingest
runs and their wall times, each run's rows against the rows uploaded around its listing, ingest
errors, and peak memory (VmHWM) of this process (the writers), the ingest process and weed.
Prints a short table and saves bench/results/soak.json (--quick: a 5 s smoke run, saves nothing).

    python bench/soak.py [--seconds 60] [--writers 16]

Loopback only; the store and its data are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

import numpy as np
from bench_store import bench_store_parts  # bench/bench_store.py (the scripts run from bench/)
from record import record

BUCKET = "hdap-soak"
PREFIX = f"s3://{BUCKET}/telemetry"
RUNS_URI = f"s3://{BUCKET}/runs"


# -- memory ----------------------------------------------------------------------------------
def proc_status_kib(pid: int | str, key: str) -> int | None:
    """A field of /proc/<pid>/status in KiB (VmRSS: now; VmHWM: the peak), None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


# -- the ingest process ----------------------------------------------------------------------
def ingest_child(spec: dict) -> None:
    """Run the ingest stage over the prefix until the stop file appears, then once more (the
    final run); one JSON line per run on stdout. Times are time.monotonic(), which is the
    system-wide CLOCK_MONOTONIC on Linux, so the parent can place them among its uploads."""
    import logging
    import traceback
    from dataclasses import fields

    import hdap.fleet.ingest  # noqa: F401  (imported by the stage's first run: not part of its wall time)
    from hdap.stages import StageContext
    from hdap.stages.ingest import STAGE
    from hdap.store import ObjectStore

    logging.basicConfig(level=logging.WARNING, format="ingest child: %(levelname)s %(message)s")
    store = ObjectStore.from_environment()
    config = STAGE.config(telemetry_uri=spec["prefix"], sku=spec["sku"])
    stop = Path(spec["stop_file"])
    run = 0
    with tempfile.TemporaryDirectory(prefix="hdap-soak-ingest-") as scratch:
        outputs = STAGE.outputs(**{f.name: Path(scratch) / f"{f.name}.parquet" for f in fields(STAGE.outputs)})
        while True:
            final = stop.exists()  # checked before the run: the final one starts after every writer stopped
            context = StageContext(store, spec["runs_uri"], f"soak-{run:04d}")
            start = time.monotonic()
            line: dict = {"run": run, "final": final, "start": start}
            try:
                line["metrics"] = STAGE.run(config, STAGE.inputs(), outputs, context)
            except Exception as err:  # noqa: BLE001 (recorded by kind, and the soak goes on)
                where = traceback.extract_tb(err.__traceback__)[-1]
                line["error"] = {"kind": type(err).__name__, "message": str(err)[:300],
                                 "where": f"{where.filename.rsplit('/src/', 1)[-1]}:{where.lineno}"}
            line["end"] = time.monotonic()
            line["vmhwm_kib"] = proc_status_kib("self", "VmHWM")
            print(json.dumps(line), flush=True)
            run += 1
            if final:
                return
            pause = spec["interval_s"] - (line["end"] - start)
            while pause > 0 and not stop.exists():
                time.sleep(min(pause, 0.2))
                pause -= 0.2


# -- the writers -----------------------------------------------------------------------------
@dataclass
class Upload:
    start: float  # time.monotonic()
    end: float
    ok: bool
    size: int  # bytes of the object (also for a failed attempt)
    key: str


@dataclass
class Writer:
    index: int
    uploads: list[Upload] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    crashed: str = ""


def error_kind(err: BaseException) -> str:
    """What an upload failed on: hdap's errors hide the SDK's exception as their context."""
    cause = err.__cause__ or err.__context__
    if cause is None:
        return type(err).__name__
    detail = getattr(cause, "code", None) or type(getattr(cause, "reason", None) or cause).__name__
    return f"{type(err).__name__}<-{type(cause).__name__}:{detail}"


def write_loop(writer: Writer, config, sku_name: str, devices: int, rows: int, think_s: float,
               ready: threading.Barrier, go: threading.Event, deadline: list[float]) -> None:
    """One device agent's uploads (cycling over `devices` simulated devices), from `go` until `deadline[0]`."""
    import pyarrow as pa

    from hdap.fleet.simulate import simulate_chunk
    from hdap.fleet.sku import get_sku
    from hdap.store import ObjectStore

    try:
        store = ObjectStore(config)  # its own client and connections, as a device has
        now_ms = int(time.time() * 1000)
        pool = simulate_chunk(get_sku(sku_name), writer.index * 100_000, devices, 1,
                              datetime.fromtimestamp(now_ms / 1000, timezone.utc), seed=writer.index).days[0][1]
        ts_index = pool.schema.get_field_index("timestamp")
        ts_field = pool.schema.field(ts_index)
        device_ids = pool.column("device_id").to_pylist()
        # Every report of this writer gets its own millisecond in the past: no (device, timestamp)
        # repeats (ingest would quarantine a repeat as a duplicate) and none lies in the future.
        base_ms = now_ms - 60_000
    except Exception as err:  # noqa: BLE001 (reported as the writer's crash)
        writer.crashed = f"{type(err).__name__}: {err}"[:300]
        ready.wait()
        return
    ready.wait()
    go.wait()
    try:
        seq = 0
        while time.monotonic() < deadline[0]:
            device = seq % devices
            stamps = [base_ms - seq * rows - k for k in range(rows)]
            table = pool.take([device] * rows).set_column(ts_index, ts_field, pa.array(stamps, ts_field.type))
            key = f"{PREFIX}/{device_ids[device]}/{stamps[0]}.parquet"
            start = time.monotonic()
            try:
                info = store.put_table(key, table)
                writer.uploads.append(Upload(start, time.monotonic(), True, info.size, key))
            except Exception as err:  # noqa: BLE001 (every failed upload is counted by kind)
                kind = error_kind(err)
                writer.errors[kind] += 1
                writer.error_samples.setdefault(kind, str(err)[:300])
                writer.uploads.append(Upload(start, time.monotonic(), False, 0, key))
            seq += 1
            if think_s:
                time.sleep(think_s)
    except Exception as err:  # noqa: BLE001 (a writer that cannot go on is reported, not hidden)
        writer.crashed = f"{type(err).__name__}: {err}"[:300]


# -- figures ---------------------------------------------------------------------------------
def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(seconds, q)) * 1000, 1) if seconds else None


def ingest_figures(runs: list[dict], uploads: list[Upload], rows: int) -> list[dict]:
    """Each ingest run against the uploads around it: the objects it listed lie between the
    uploads acknowledged before it started and those begun before it ended."""
    ends = np.sort([u.end for u in uploads if u.ok])
    starts = np.sort([u.start for u in uploads])
    out = []
    for r in runs:
        m = r.get("metrics") or {}
        acked_before = int(np.searchsorted(ends, r["start"], side="right"))
        begun_before = int(np.searchsorted(starts, r["end"], side="right"))
        row = {
            "run": r["run"], "final": r["final"], "wall_s": round(r["end"] - r["start"], 2),
            "objects_listed": m.get("objects_listed"), "objects_read": m.get("objects_read"), "rows_read": m.get("rows_read"), "rows_valid": m.get("rows_valid"),
            "rows_quarantined": m.get("rows_quarantined"), "objects_unreadable": m.get("objects_unreadable"),
            "objects_skipped": m.get("objects_skipped"),
            "ingest_process_peak_rss_mib_so_far": mib(r.get("vmhwm_kib")),
            "rows_uploaded_acked_before_start": acked_before * rows, "rows_uploaded_begun_before_end": begun_before * rows,
        }
        if "error" in r:
            row["error"] = r["error"]
        else:
            row["consistent"] = bool(
                acked_before * rows <= (m.get("rows_read") or 0) <= begun_before * rows
                and m.get("rows_read") == m.get("rows_valid") == (m.get("objects_read") or 0) * rows
                and not m.get("rows_quarantined") and not m.get("objects_unreadable") and not m.get("objects_skipped")
                # objects_listed: reported by ingest stages that count their listing
                and m.get("objects_listed") in (None, m.get("objects_read"))
            )
        out.append(row)
    return out


def timeline(uploads: list[Upload], t0: float, t1: float, memory: list[tuple], buckets: int = 6) -> list[dict]:
    """Uploads/s, latency and memory in equal slices of the writing time: does anything degrade?"""
    edges = np.linspace(t0, t1, buckets + 1)
    out = []
    for a, b in pairwise(edges):
        done = [u for u in uploads if a <= u.end < b]
        ok = [u.end - u.start for u in done if u.ok]
        mem = [m for m in memory if a <= m[0] < b]
        out.append({
            "from_s": round(a - t0, 1), "to_s": round(b - t0, 1),
            "uploads_per_s": round(len(ok) / (b - a), 1), "errors": sum(1 for u in done if not u.ok),
            "latency_p50_ms": percentile_ms(ok, 50), "latency_p99_ms": percentile_ms(ok, 99),
            "weed_rss_mib": mib(max((m[2] for m in mem if m[2] is not None), default=None)),
            "writers_rss_mib": mib(max((m[1] for m in mem if m[1] is not None), default=None)),
            "ingest_rss_mib": mib(max((m[3] for m in mem if m[3] is not None), default=None)),
        })
    return out


# -- the soak --------------------------------------------------------------------------------
def soak(args: argparse.Namespace) -> dict:
    from hdap.store import S3Uri

    with bench_store_parts(BUCKET, prefix="hdap-soak-") as (store, embedded, root):
        weed_pid = embedded.status().pid
        stop_file = root / "writers-stopped"
        writers = [Writer(i) for i in range(args.writers)]
        # The clock starts once every writer has simulated its devices.
        ready, go, deadline = threading.Barrier(args.writers + 1), threading.Event(), []
        threads = [threading.Thread(target=write_loop, name=f"writer-{w.index}", daemon=True,
                                    args=(w, store.config, args.sku, args.devices_per_writer, args.rows_per_object,
                                          args.think_ms / 1000, ready, go, deadline))
                   for w in writers]
        for t in threads:
            t.start()
        ready.wait()
        t0 = time.monotonic()
        deadline.append(t0 + args.seconds)
        go.set()

        # Memory: this process (writers), weed and the ingest process, every half second.
        memory: list[tuple] = []
        child_pid: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                memory.append((time.monotonic(), proc_status_kib("self", "VmRSS"), proc_status_kib(weed_pid, "VmRSS"),
                               proc_status_kib(child_pid[0], "VmRSS") if child_pid else None))
                sampling.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        # Ingest starts once there is something to ingest (an empty prefix is an error by design).
        while not any(u.ok for w in writers for u in w.uploads[:1]) and time.monotonic() < deadline[0]:
            time.sleep(0.05)
        spec = {"prefix": PREFIX, "sku": args.sku, "runs_uri": RUNS_URI, "stop_file": str(stop_file),
                "interval_s": args.ingest_interval}
        child_log = (root / "ingest-child.log").open("w")
        child = subprocess.Popen([sys.executable, __file__, "--ingest-child", json.dumps(spec)],
                                 stdout=subprocess.PIPE, stderr=child_log, text=True)
        child_pid.append(child.pid)
        runs: list[dict] = []

        def read_child() -> None:
            for line in child.stdout:
                try:
                    runs.append(json.loads(line))
                except ValueError:
                    pass

        reader = threading.Thread(target=read_child, daemon=True)
        reader.start()

        for t in threads:
            t.join()
        t1 = time.monotonic()
        stop_file.touch()  # the ingest process finishes its run, then runs the final one
        try:
            child.wait(timeout=args.final_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        reader.join(timeout=5)
        sampling.set()
        sampler.join()
        child_log.close()
        child_stderr = (root / "ingest-child.log").read_text(errors="replace")

        uploads = sorted((u for w in writers for u in w.uploads), key=lambda u: u.start)
        listed = {o.uri: o.size for o in store.list(PREFIX)}
        weed_hwm = proc_status_kib(weed_pid, "VmHWM")
        weed_fds = len(os.listdir(f"/proc/{weed_pid}/fd")) if weed_pid and Path(f"/proc/{weed_pid}/fd").exists() else None
        store_bytes = embedded.status().data_bytes

    ok = [u for u in uploads if u.ok]
    latencies = [u.end - u.start for u in ok]
    window = t1 - t0
    errors: Counter = Counter()
    samples: dict[str, str] = {}
    for w in writers:
        errors.update(w.errors)
        for kind, text in w.error_samples.items():
            samples.setdefault(kind, text)
    acked = {str(S3Uri.parse(u.key)) for u in ok}
    failed_keys = {str(S3Uri.parse(u.key)) for u in uploads if not u.ok}
    rows = args.rows_per_object
    per_run = ingest_figures(runs, uploads, rows)
    soak_runs = [r for r in per_run if not r["final"]]
    final = next((r for r in per_run if r["final"]), None)
    lost = sorted(acked - set(listed))
    landed_despite_error = sorted((set(listed) - acked) & failed_keys)
    unknown = sorted(set(listed) - acked - failed_keys)
    ingest_walls = [r["wall_s"] for r in soak_runs if "error" not in r]
    ingest_errors = Counter(r["error"]["kind"] for r in per_run if "error" in r)
    expected_rows = len(listed) * rows
    consistent = bool(
        final is not None and "error" not in final
        and final["rows_read"] == final["rows_valid"] == expected_rows == len(acked) * rows + len(landed_despite_error) * rows
        and final["objects_read"] == len(listed) and final["objects_listed"] in (None, len(listed))
        and not final["rows_quarantined"] and not final["objects_unreadable"] and not final["objects_skipped"]
        and not lost and not unknown
    )
    return {
        "settings": {"seconds": args.seconds, "writers": args.writers, "rows_per_object": rows,
                     "devices_per_writer": args.devices_per_writer, "sku": args.sku, "think_ms": args.think_ms,
                     "ingest_interval_s": args.ingest_interval, "writers_are": "threads of this process",
                     "ingest_is": "a child process calling hdap.stages.ingest's run (STAGE.run) in a loop"},
        "writing_s": round(window, 1),
        "uploads_ok": len(ok),
        "uploads_failed": len(uploads) - len(ok),
        "uploads_per_s": round(len(ok) / window, 1),
        "bytes_per_s": round(sum(u.size for u in ok) / window),
        "mean_object_bytes": round(sum(u.size for u in ok) / max(1, len(ok))),
        "rows_uploaded": len(ok) * rows,
        "upload_latency_ms": {"p50": percentile_ms(latencies, 50), "p90": percentile_ms(latencies, 90),
                              "p99": percentile_ms(latencies, 99), "max": percentile_ms(latencies, 100)},
        "slowest_uploads": [{"at_s": round(u.start - t0, 2), "ms": round((u.end - u.start) * 1000, 1), "ok": u.ok,
                             "key": u.key.removeprefix(PREFIX + "/")}
                            for u in sorted(uploads, key=lambda u: u.start - u.end)[:5]],
        "upload_errors": dict(errors),
        "upload_error_samples": samples,
        "writers_crashed": {w.index: w.crashed for w in writers if w.crashed},
        "ingest_runs_during_writing": len(soak_runs),
        "ingest_runs_failed": sum(1 for r in per_run if "error" in r),
        "ingest_errors": dict(ingest_errors),
        "ingest_wall_s": {"median": round(float(np.median(ingest_walls)), 2) if ingest_walls else None,
                          "max": max(ingest_walls, default=None),
                          "final": final["wall_s"] if final else None},
        "ingest_runs_consistent": sum(1 for r in soak_runs if r.get("consistent")),
        "ingest_runs": per_run,
        "final_check": {
            "objects_in_store": len(listed), "objects_acknowledged": len(acked),
            "rows_expected": expected_rows,
            "rows_read": final and final["rows_read"], "rows_valid": final and final["rows_valid"],
            "rows_quarantined": final and final["rows_quarantined"],
            "objects_unreadable": final and final["objects_unreadable"],
            "objects_listed_by_ingest": final and final["objects_listed"],
            "objects_skipped": final and final["objects_skipped"],
            "acknowledged_but_missing": lost[:20], "acknowledged_but_missing_count": len(lost),
            "failed_but_landed_count": len(landed_despite_error),
            "in_store_never_written_count": len(unknown),
            "consistent": consistent,
        },
        "peak_rss_mib": {"writers_process": mib(proc_status_kib("self", "VmHWM")),
                         "ingest_process": mib(max((r.get("vmhwm_kib") or 0 for r in runs), default=None)),
                         "weed": mib(weed_hwm)},
        "weed_open_fds_at_end": weed_fds,
        "store_data_mib": round(store_bytes / 2**20, 1),
        "timeline": timeline(uploads, t0, t1, memory),
        "ingest_child_stderr_tail": child_stderr.strip().splitlines()[-10:],
    }


def show(r: dict) -> None:
    lat = r["upload_latency_ms"]
    fc = r["final_check"]
    peak = r["peak_rss_mib"]
    lines = [
        ("writing", f"{r['writing_s']} s, {r['settings']['writers']} writers, {r['settings']['rows_per_object']} row(s) per object"),
        ("uploads", f"{r['uploads_ok']:,} ok, {r['uploads_failed']} failed {r['upload_errors'] or ''}"),
        ("throughput", f"{r['uploads_per_s']:,} uploads/s, {r['bytes_per_s'] / 1e6:.2f} MB/s ({r['mean_object_bytes']:,} B/object)"),
        ("upload latency", f"p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"),
        ("slowest", ", ".join(f"{u['ms']:.0f} ms at {u['at_s']} s" for u in r["slowest_uploads"][:3])),
        ("ingest runs", (f"{r['ingest_runs_during_writing']} during writing ({r['ingest_runs_consistent']} consistent), "
                         f"{r['ingest_runs_failed']} failed {r['ingest_errors'] or ''}")),
        ("ingest wall", f"median {r['ingest_wall_s']['median']} s, max {r['ingest_wall_s']['max']} s, final {r['ingest_wall_s']['final']} s"),
        ("final ingest", (f"{fc['rows_read']} rows read / {fc['rows_expected']} expected ({fc['objects_in_store']} objects, "
                          f"{fc['objects_acknowledged']} acknowledged), {fc['rows_quarantined']} quarantined, "
                          f"{fc['objects_unreadable']} unreadable, {fc['acknowledged_but_missing_count']} lost")),
        ("consistent", str(fc["consistent"])),
        ("peak RSS", f"writers {peak['writers_process']} MiB, ingest {peak['ingest_process']} MiB, weed {peak['weed']} MiB"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    print("\nslice        uploads/s  p50 ms  p99 ms  errors  weed MiB  writers MiB  ingest MiB")
    for s in r["timeline"]:
        print(f"{s['from_s']:>5}-{s['to_s']:<5}  {s['uploads_per_s']:>9}  {s['latency_p50_ms']!s:>6}  {s['latency_p99_ms']!s:>6}  "
              f"{s['errors']:>6}  {s['weed_rss_mib']!s:>8}  {s['writers_rss_mib']!s:>11}  {s['ingest_rss_mib']!s:>10}")
    print("\ningest runs: " + ", ".join(
        f"#{x['run']}{' (final)' if x['final'] else ''} {x['wall_s']} s {x.get('rows_read')} rows"
        + ("" if x.get("consistent", False) else " INCONSISTENT" if "error" not in x else f" ERROR {x['error']['kind']}")
        for x in r["ingest_runs"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writers upload (default 60)")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writer threads, each a device agent with its own client (default 16)")
    parser.add_argument("--rows-per-object", type=int, default=1,
                        help="reports per uploaded object (default 1: one report per object, as `hdap profile` uploads)")
    parser.add_argument("--devices-per-writer", type=int, default=64, help="simulated devices each writer cycles through (default 64)")
    parser.add_argument("--sku", default="jetson-xavier-nx", help="the simulated devices' SKU (default jetson-xavier-nx)")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="pause of each writer between uploads (default 0: as fast as it can)")
    parser.add_argument("--ingest-interval", type=float, default=0.0,
                        help="start an ingest run at most every this many seconds (default 0: back to back)")
    parser.add_argument("--final-timeout", type=float, default=600.0,
                        help="how long to wait for the running ingest and the final one after the writers stop (default 600 s)")
    parser.add_argument("--save-as", default="soak", help="results file name under bench/results/ (default soak)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s, 2 writers, nothing saved")
    parser.add_argument("--ingest-child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_child:
        ingest_child(json.loads(args.ingest_child))
        return
    if args.quick:
        args.seconds, args.writers = 5.0, 2
    if args.writers < 1 or args.seconds <= 0 or args.rows_per_object < 1 or args.devices_per_writer < 1:
        parser.error("--writers, --seconds, --rows-per-object and --devices-per-writer must be positive")
    started = time.perf_counter()
    results = soak(args)
    show(results)
    record("soak", results, args.quick, started, saved_as=args.save_as)


if __name__ == "__main__":
    main()
