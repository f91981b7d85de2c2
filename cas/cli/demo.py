"""``make run``: the main job on an embedded default.

Opens (or creates) a local store in ./demo-store, saves a few artifacts of different
kinds, shows that the same bytes are stored once, verifies everything, and prints ids.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import blake3

import cas


def main(root: str = "demo-store") -> int:
    store = cas.open_store(root)
    print(f"store: {store.url}")

    data = b"transaction_id,amount,label\n" + b"".join(
        f"{i},{i * 3 % 997}.{i % 100:02d},{int(i % 17 == 0)}\n".encode() for i in range(50_000)
    )
    raw = store.save(data, "datasets/transactions", metadata={"rows": 50_000})
    features = store.save(
        {"columns": ["amount"], "scaler": "standard", "mean": 498.0},
        "features/fraud",
        parent_ids=[raw],
    )
    model = store.materialize(
        {"kind": "gradient-boosting", "auc": 0.91}, "model", run_id="run-001", step_name="train"
    )
    model_id = store.get_metadata(model)["id"]
    store.catalog.tag(model_id, stage="production", team="fraud")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "report")
        folder.mkdir()
        (folder / "summary.txt").write_text("auc 0.91\n")
        (folder / "plots").mkdir()
        (folder / "plots" / "roc.csv").write_text("fpr,tpr\n0,0\n1,1\n")
        report = store.save(folder, "reports/fraud", parent_ids=[features])

    for name in store.list_artifacts():
        meta = store.get_metadata(name)
        print(f"  {meta['id'][:16]}  {meta['type']:<10} {meta['size']:>9} B  {name}")

    objects_before = sum(1 for _ in store.repo.space)
    again = store.save(data, "datasets/transactions-copy")
    objects_after = sum(1 for _ in store.repo.space)
    content = store.get_metadata(again)["content_id"]
    assert content == blake3.blake3(data).hexdigest() == store.get_metadata(raw)["content_id"]
    new = objects_after - objects_before
    print(
        f"saved the same {len(data):,} bytes under a second name: content {content[:16]} is "
        f"stored once ({new} new object{'s' if new != 1 else ''}: "
        f"{'a record' if new else 'not even a record: that save was already there'}, no content)"
    )

    assert store.load("datasets/transactions") == data == store.load(raw)
    assert Path(store.load(report), "plots", "roc.csv").read_text().startswith("fpr")
    hits = store.catalog.search("stage:production fraud")
    print(f"search 'stage:production fraud': {[a.name for a in hits]}")
    lineage = store.catalog.get_lineage(features)
    print(
        f"lineage of features/fraud: parents {[a.name for a in lineage['parents']]}, "
        f"children {[a.name for a in lineage['children']]}"
    )
    print("every artifact loaded and verified against its BLAKE3 id")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:2] or [os.environ.get("CAS_DEMO_ROOT", "demo-store")])))
