"""A gRPC client Carrel did not write reads a control chart from the hub and checks
its figures independently.

The client is grpcio, with stubs generated from proto/ at run time by grpc_tools.
It signs in, asks AnalyticsService.GetChart for one attribute, and recomputes from
the chart's own points, with SciPy and NumPy:
- each site against the rest: Welch's difference, interval and p, the choice of
  test (Jarque-Bera at 5% on either side picks Mann-Whitney) and that test's p;
- the network's capability (Cpk, Ppk and Bissell's intervals);
- each series' limits, from the baseline's batches when one is chosen (else the
  series' first 20 points), as mean and MR-bar / 1.128;
- each series' rule 1 signals (points beyond 3 sigma).

Usage: analytics_client.py ADDR CA_CERT USER PASSWORD PRODUCT ATTRIBUTE
Prints JSON: {"checked": n, "errors": [...], "sites": [...], "baseline": n}.
"""

import json
import os
import sys
import tempfile

import grpc
import numpy as np
from grpc_tools import protoc
from scipy import stats

TOLERANCE = 1e-9


def stubs():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "proto")
    out = tempfile.mkdtemp(prefix="carrel-stubs-")
    files = [os.path.join("carrel", "v1", f) for f in ("auth.proto", "analytics.proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"] + files)
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    sys.path.insert(0, out)
    from carrel.v1 import analytics_pb2, analytics_pb2_grpc, auth_pb2, auth_pb2_grpc

    return analytics_pb2, analytics_pb2_grpc, auth_pb2, auth_pb2_grpc


def close(errors, what, ours, theirs):
    if abs(ours - theirs) > TOLERANCE * max(abs(theirs), 1.0):
        errors.append(f"{what}: Carrel {ours!r}, SciPy/NumPy {theirs!r}")


def limits_of(values):
    mr_bar = np.abs(np.diff(values)).mean()
    sigma = mr_bar / 1.128
    return values.mean(), sigma


def main():
    addr, ca, user, password, product, attribute = sys.argv[1:7]
    analytics_pb2, analytics_grpc, auth_pb2, auth_grpc = stubs()
    with open(ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(addr, credentials)
    token = auth_grpc.AuthServiceStub(channel).Login(auth_pb2.LoginRequest(username=user, password=password)).token
    metadata = [("authorization", f"Bearer {token}")]
    chart = analytics_grpc.AnalyticsServiceStub(channel).GetChart(
        analytics_pb2.GetChartRequest(product_id=product, attribute=attribute), metadata=metadata
    ).chart

    errors = []
    checked = 0
    points = chart.network.points
    by_site = {}
    for p in points:
        by_site.setdefault(p.site_id, []).append(p.value)
    baseline = set(chart.baseline.batch_ids) if chart.HasField("baseline") else None

    for cmp in chart.comparisons:
        site = np.asarray(by_site[cmp.site_id])
        rest = np.asarray([p.value for p in points if p.site_id != cmp.site_id])
        if not cmp.computed:
            continue
        welch = stats.ttest_ind(site, rest, equal_var=False)
        ci = welch.confidence_interval(confidence_level=0.95)
        close(errors, f"{cmp.site_id} difference", cmp.difference, site.mean() - rest.mean())
        close(errors, f"{cmp.site_id} low", cmp.low, float(ci.low))
        close(errors, f"{cmp.site_id} high", cmp.high, float(ci.high))
        normal = stats.jarque_bera(site).pvalue >= 0.05 and stats.jarque_bera(rest).pvalue >= 0.05
        expected_test = "welch" if normal else "mann-whitney"
        if cmp.test != expected_test:
            errors.append(f"{cmp.site_id}: Carrel chose {cmp.test}, Jarque-Bera says {expected_test}")
        if normal:
            p = welch.pvalue
        else:
            p = stats.mannwhitneyu(site, rest, alternative="two-sided", method="asymptotic", use_continuity=True).pvalue
        close(errors, f"{cmp.site_id} p", cmp.p, float(p))
        checked += 1

    if chart.network.HasField("capability") and (chart.has_spec_lower or chart.has_spec_upper):
        x = np.asarray([p.value for p in points])
        n = len(x)
        z = stats.norm.ppf(0.975)
        for name, sigma in (("cpk", np.abs(np.diff(x)).mean() / 1.128), ("ppk", x.std(ddof=1))):
            sides = []
            if chart.has_spec_upper:
                sides.append((chart.spec_upper - x.mean()) / (3 * sigma))
            if chart.has_spec_lower:
                sides.append((x.mean() - chart.spec_lower) / (3 * sigma))
            k = min(sides)
            half = z * np.sqrt(1 / (9 * n) + k * k / (2 * (n - 1)))
            cap = chart.network.capability
            close(errors, f"network {name}", getattr(cap, name), k)
            close(errors, f"network {name} low", getattr(cap, f"{name}_low"), k - half)
            close(errors, f"network {name} high", getattr(cap, f"{name}_high"), k + half)
            checked += 1

    for series in [chart.network] + list(chart.sites):
        name = series.site_id or "network"
        values = np.asarray([p.value for p in series.points])
        if baseline is None:
            base = values[:20]
        else:
            base = np.asarray([p.value for p in series.points if p.batch_id in baseline])
        if series.limits_of_network or len(base) < 2:
            continue
        centre, sigma = limits_of(base)
        close(errors, f"{name} centre", series.limits.center, centre)
        close(errors, f"{name} ucl", series.limits.ucl, centre + 3 * sigma)
        close(errors, f"{name} lcl", series.limits.lcl, centre - 3 * sigma)
        beyond = {i for i, v in enumerate(values) if abs(v - centre) > 3 * sigma}
        reported = {s.index for s in series.signals if s.rule == 1}
        if beyond != reported:
            errors.append(f"{name}: rule 1 at {sorted(reported)}, beyond 3 sigma at {sorted(beyond)}")
        checked += 1

    json.dump(
        {
            "checked": checked,
            "errors": errors,
            "sites": sorted(by_site),
            "baseline": len(baseline) if baseline is not None else 0,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
