"""Independent figures for Carrel's process analytics, computed with SciPy and NumPy.

Reads one JSON object from stdin: {"cases": [{"a": [...], "b": [...], "lower": x|null,
"upper": x|null, "confidence": 0.95}, ...]} and writes, for each case, what SciPy says:
Welch's t-test (statistic, df, two-sided p, interval of the difference), the
Mann-Whitney U test (asymptotic, continuity-corrected, two-sided), the Jarque-Bera test
of each group, and Cpk/Ppk of `a` with Bissell's interval, written out here from their
textbook definitions with NumPy rather than taken from Carrel.
"""

import json
import sys

import numpy as np
from scipy import stats


def capability(values, lower, upper, confidence):
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = x.mean()
    within = np.abs(np.diff(x)).mean() / 1.128
    overall = x.std(ddof=1)
    z = stats.norm.ppf((1 + confidence) / 2)

    def index(sigma):
        sides = []
        if upper is not None:
            sides.append((upper - mean) / (3 * sigma))
        if lower is not None:
            sides.append((mean - lower) / (3 * sigma))
        k = min(sides)
        half = z * np.sqrt(1 / (9 * n) + k * k / (2 * (n - 1)))
        return {"value": k, "low": k - half, "high": k + half}

    return {"cpk": index(within), "ppk": index(overall)}


def main():
    request = json.load(sys.stdin)
    out = []
    for case in request["cases"]:
        a, b = case["a"], case["b"]
        conf = case["confidence"]
        welch = stats.ttest_ind(a, b, equal_var=False)
        ci = welch.confidence_interval(confidence_level=conf)
        mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
        jb_a = stats.jarque_bera(a)
        jb_b = stats.jarque_bera(b)
        out.append({
            "welch": {"t": float(welch.statistic), "df": float(welch.df), "p": float(welch.pvalue),
                      "low": float(ci.low), "high": float(ci.high)},
            "mann_whitney": {"u": float(mw.statistic), "p": float(mw.pvalue)},
            "jarque_bera": [[float(jb_a.statistic), float(jb_a.pvalue)], [float(jb_b.statistic), float(jb_b.pvalue)]],
            "capability": capability(a, case["lower"], case["upper"], conf),
        })
    json.dump({"results": out}, sys.stdout)


if __name__ == "__main__":
    main()
