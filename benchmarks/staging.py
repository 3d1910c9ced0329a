"""Staging throughput: the shared PetImages-180 folder into a local bucket and into GCS (emulated).

    .venv/bin/python -m benchmarks.staging [--source ../shared/datasets/petimages-180]

Prints a Markdown table (files/s, duplicate groups found) for benchmarks/README.md.
Both targets run in one process, one after the other, on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness.gcs import emulated_gcs
from harness.serving import free_port
from training.staging import StagingOptions, stage_dataset

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "petimages-180"


def shared_dataset_missing(source: Path) -> bool:
    """Benchmarks use the shared dataset; a machine without it skips them, saying so."""
    if source.is_dir():
        return False
    print(f"skipped: {source} is not here (the shared dataset)", file=sys.stderr)
    return True


def _run(source: Path, dataset_uri: str, cache: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    manifest = stage_dataset(str(source), dataset_uri, StagingOptions(), cache_dir=cache)
    return time.perf_counter() - started, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    files = sum(1 for p in args.source.rglob("*") if p.is_file())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        seconds, manifest = _run(args.source, f"{tmp}/bucket/datasets/pets", Path(tmp) / "cache")
        rows.append(("local folder", seconds, manifest))
        with emulated_gcs("bench", free_port()) as bucket:
            seconds, manifest = _run(args.source, f"{bucket}/datasets/pets", Path(tmp) / "cache")
            rows.append(("fake-gcs-server (GCS API, 8 upload threads)", seconds, manifest))
            seconds_rerun, _ = _run(args.source, f"{bucket}/datasets/pets", Path(tmp) / "cache")
            rows.append(("fake-gcs-server, rerun (manifest reused)", seconds_rerun, manifest))
    print(f"source: {args.source} ({files} files)\n")
    print("| target | seconds | files/s | staged | dropped | duplicate groups |")
    print("|---|---|---|---|---|---|")
    for name, seconds, manifest in rows:
        print(
            f"| {name} | {seconds:.1f} | {files / seconds:,.0f} | {len(manifest['files'])} "
            f"| {len(manifest['dropped'])} | {manifest['duplicate_groups']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
