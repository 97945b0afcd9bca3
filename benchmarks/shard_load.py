"""What loading one group's shard costs, and how much of it its payload indexes are.

    .venv/bin/python benchmarks/shard_load.py /tmp/scale1m/mixed-1100000/groups/big

Each of a digest's store steps opens the group's faces and ledger shards (Qdrant Edge loads a
shard whole), so a digest into a large group pays this a few times (docs/measurements/store.md).
For each collection of the group (`faces_dlib`, `images_dlib`) the script copies the shard twice
into a temporary folder (the store itself is never changed): as it is, and with every payload index
dropped; then loads and closes each copy --loads times in a new process and prints the median CPU
milliseconds of the load and of the close. Qdrant Edge drops a closed shard's files from the OS's
cache, so every load reads them again, as a digest's next step does.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def probe(shard: str, loads: int) -> dict:
    """Load and close `shard` `loads` times in this process; median CPU ms of each."""
    import qdrant_edge

    load_ms, close_ms = [], []
    for _ in range(loads):
        start = time.process_time()
        loaded = qdrant_edge.EdgeShard.load(shard)
        opened = time.process_time()
        loaded.close()
        load_ms.append(1000 * (opened - start))
        close_ms.append(1000 * (time.process_time() - opened))
    return {"load_cpu_ms": statistics.median(load_ms), "close_cpu_ms": statistics.median(close_ms)}


def without_indexes(shard: Path) -> list[str]:
    """Drop every payload index of the shard (a copy); the fields they indexed."""
    import qdrant_edge

    loaded = qdrant_edge.EdgeShard.load(str(shard))
    fields = sorted(loaded.info().payload_schema)
    for field in fields:
        loaded.update(qdrant_edge.UpdateOperation.delete_field_index(field))
    loaded.close()
    return fields


def measure(shard: Path, loads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "_probe", str(shard), str(loads)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group", type=Path, help="a group's folder in a store: QDRANT_PATH/groups/GROUP")
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for collection in sorted(p.name for p in args.group.iterdir() if (p / "segments").is_dir()):
            kept, bare = Path(work) / f"{collection}-kept", Path(work) / f"{collection}-bare"
            for copy in (kept, bare):  # cp keeps the WAL's unwritten 32 MB files sparse, as Qdrant made them
                subprocess.run(["cp", "-a", "--sparse=always", str(args.group / collection), str(copy)], check=True)
            fields = without_indexes(bare)
            with_them, without = measure(kept, args.loads), measure(bare, args.loads)
            print(
                f"{collection}: load {with_them['load_cpu_ms']:.1f} ms, close {with_them['close_cpu_ms']:.1f} ms "
                f"with its payload indexes ({', '.join(fields)}); load {without['load_cpu_ms']:.1f} ms, "
                f"close {without['close_cpu_ms']:.1f} ms without them (CPU, median of {args.loads})",
                flush=True,
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["_probe"]:
        print(json.dumps(probe(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
