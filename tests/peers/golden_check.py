"""A gRPC client Carrel did not write reads an order's golden batch from the hub and
recomputes it from the stored site records with NumPy.

The client is grpcio, with stubs generated from proto/ at run time by grpc_tools.
It signs in and asks AnalyticsService.GetGoldenBatch for one order. Independently,
it reads the hub's SQLite database (read-only) for every released batch's
process_samples records (the canonical JSON the site sent) and the recipe's TOML,
and computes, for each step and parameter the hub answered:
- each batch's mean of its samples in each bin of time in step (twelve bins over
  the step's planned duration; a sample at the planned end in the last; a step that
  runs over continues, up to 48 bins);
- each bin's 5th, 50th and 95th percentiles over the released batches
  (NumPy's method="median_unbiased"), where at least 5 batches have samples;
- the order's own bin means, and the bins where they lie outside the band.

Usage: golden_check.py ADDR CA_CERT USER PASSWORD ORDER_ID HUB_DB RECIPES_DIR
Prints JSON: {"checked": n, "errors": [...], "excursions": n, "released": n}.
"""

import json
import math
import os
import sqlite3
import sys
import tomllib

import grpc
import numpy as np

# The same stubs and tolerance as the control-chart check beside it.
from analytics_client import close, stubs

BINS = 12
MAX_BINS = 48
MIN_BATCHES = 5
RELEASED = ("released", "handed_over", "infused")


def bin_of(hours, duration):
    width = duration / BINS if duration > 0 else 1.0
    if not math.isfinite(hours) or hours < 0:
        return None
    b = math.floor(hours / width)
    if b >= MAX_BINS:
        return None
    return min(b, BINS - 1) if hours <= duration else b


def bin_means(db, batch_id, step, parameter):
    """{bin: mean} of one batch's samples of a parameter in a step, in its unit."""
    sums = {}
    for (body,) in db.execute(
        "SELECT body FROM site_events WHERE batch_id = ? AND kind = 'process_samples' ORDER BY site_id, seq",
        (batch_id,),
    ):
        kind = json.loads(body)["kind"]
        if kind["step_id"] != step["id"]:
            continue
        for s in kind["samples"]:
            if s["parameter"] != parameter["name"] or (parameter["unit"] and s["unit"] != parameter["unit"]):
                continue
            if not math.isfinite(s["value"]) or abs(s["value"]) > 1e15:
                continue
            b = bin_of(s["step_hours"], step["duration_hours"])
            if b is None:
                continue
            n, total = sums.get(b, (0, 0.0))
            sums[b] = (n + 1, total + s["value"])
    return {b: total / n for b, (n, total) in sums.items()}


def main():
    addr, ca, user, password, order_id, hub_db, recipes = sys.argv[1:8]
    analytics_pb2, analytics_grpc, auth_pb2, auth_grpc = stubs()
    with open(ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(addr, credentials)
    token = auth_grpc.AuthServiceStub(channel).Login(auth_pb2.LoginRequest(username=user, password=password)).token
    golden = analytics_grpc.AnalyticsServiceStub(channel).GetGoldenBatch(
        analytics_pb2.GetGoldenBatchRequest(order_id=order_id), metadata=[("authorization", f"Bearer {token}")]
    )

    db = sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True)
    product, version = db.execute(
        "SELECT recipe_id, recipe_version FROM orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    with open(os.path.join(recipes, f"{product}.v{version}.toml"), "rb") as f:
        recipe = tomllib.load(f)
    released = [
        b
        for (b,) in db.execute(
            "SELECT o.batch_id FROM orders o JOIN batches b ON b.batch_id = o.batch_id "
            f"WHERE o.recipe_id = ? AND o.recipe_version = ? AND o.dry_run = 0 AND b.state IN {RELEASED}",
            (product, version),
        )
    ]
    own = golden.batch_id

    errors = []
    checked = 0
    excursions = 0
    if not golden.steps:
        errors.append("the hub answered no step")
    for gstep in golden.steps:
        step = next(s for s in recipe["steps"] if s["id"] == gstep.step_id)
        for gp in gstep.parameters:
            parameter = next(p for p in step["parameters"] if p["name"] == gp.parameter)
            what = f"{step['id']}/{parameter['name']}"
            by_bin = {}
            batches = set()
            for b in released:
                for bin_, mean in bin_means(db, b, step, parameter).items():
                    by_bin.setdefault(bin_, []).append(mean)
                    batches.add(b)
            if gp.released_batches != len(batches):
                errors.append(f"{what}: Carrel counts {gp.released_batches} released batches, the records {len(batches)}")
            expected = {b: v for b, v in by_bin.items() if len(v) >= MIN_BATCHES}
            got = {b.bin: b for b in gp.band}
            if set(got) != set(expected):
                errors.append(f"{what}: band bins {sorted(got)}, expected {sorted(expected)}")
                continue
            for b, values in expected.items():
                low, median, high = np.quantile(np.asarray(values), [0.05, 0.5, 0.95], method="median_unbiased")
                close(errors, f"{what} bin {b} p5", got[b].p5, float(low))
                close(errors, f"{what} bin {b} median", got[b].median, float(median))
                close(errors, f"{what} bin {b} p95", got[b].p95, float(high))
                checked += 1
            mine = bin_means(db, own, step, parameter)
            if sorted(mine) != [p.bin for p in gp.points]:
                errors.append(f"{what}: points in bins {[p.bin for p in gp.points]}, the records {sorted(mine)}")
            for p in gp.points:
                close(errors, f"{what} point {p.bin}", p.mean, mine.get(p.bin, float("nan")))
            outside = sorted(
                b
                for b, v in mine.items()
                if b in expected and not (got[b].p5 <= v <= got[b].p95)
            )
            if outside != [e.bin for e in gp.excursions]:
                errors.append(f"{what}: excursions in {[e.bin for e in gp.excursions]}, expected {outside}")
            excursions += len(gp.excursions)
    print(json.dumps({"checked": checked, "errors": errors, "excursions": excursions, "released": len(released)}))


if __name__ == "__main__":
    main()
