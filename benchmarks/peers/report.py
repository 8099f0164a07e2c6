"""Pure helpers of benchmarks/operator_peer.py: latencies from watch timings, medians over
repeats, and the markdown table with kubetune / peer ratios."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping

from benchmarks.operator_scale import percentile

KUBETUNE, TRAINER_V2 = "kubetune", "trainer-v2"
OPERATOR_TITLES = {KUBETUNE: "kubetune", TRAINER_V2: "Trainer v2 + JobSet"}

# (key, row label, unit, decimals): the rows of the table, in order.
MEASURES = [
    ("child_p50", "create → child (Job / JobSet), p50", "s", 2),
    ("child_p95", "create → child, p95", "s", 2),
    ("child_p99", "create → child, p99", "s", 2),
    ("pod_p50", "create → pod, p50", "s", 2),
    ("pod_p95", "create → pod, p95", "s", 2),
    ("pod_p99", "create → pod, p99", "s", 2),
    ("makespan_child", "makespan: first create → last child", "s", 1),
    ("makespan_pod", "makespan: first create → last pod", "s", 1),
    # The latencies start when a create call returns; a busy apiserver delays the calls themselves.
    ("applied_s", "first create → all N create calls returned", "s", 1),
    ("peak_rss_mb", "peak RSS (VmHWM), all operator processes", "MB", 0),
    ("peak_rss_trainer_mb", "— of which trainer-controller-manager", "MB", 0),
    ("peak_rss_jobset_mb", "— of which JobSet controller", "MB", 0),
    ("cpu_s", "operator CPU during the run, all processes", "s", 1),
    ("cpu_trainer_s", "— of which trainer-controller-manager", "s", 1),
    ("cpu_jobset_s", "— of which JobSet controller", "s", 1),
    ("writes_per_resource", "apiserver writes per resource (whole lifecycle)", "", 1),
]


def latency_summary(latencies: Iterable[float], prefix: str) -> dict[str, float]:
    """{prefix_p50, prefix_p95, prefix_p99, prefix_max} in seconds (nearest-rank percentiles)."""
    values = list(latencies)
    if not values:
        raise ValueError(f"no {prefix} latencies to summarise")
    return {f"{prefix}_p50": percentile(values, 0.50), f"{prefix}_p95": percentile(values, 0.95),
            f"{prefix}_p99": percentile(values, 0.99), f"{prefix}_max": max(values)}


def pod_seen_by_parent(pods: Mapping[str, tuple[float, str]], job_parent: Mapping[str, str]) -> dict[str, float]:
    """When every pod of each created resource had been seen: the latest first-seen time among its
    pods. `pods`: pod name -> (first seen, owning Job); `job_parent`: Job -> created resource."""
    seen: dict[str, float] = {}
    for t, job in pods.values():
        parent = job_parent.get(job)
        if parent is not None:
            seen[parent] = max(t, seen.get(parent, t))
    return seen


def latencies(created: Mapping[str, float], seen: Mapping[str, float]) -> list[float]:
    """Seconds from each create call returning to its child/pod's first watch event; raises if any
    created resource has none (a missing child must not shrink the percentiles)."""
    missing = sorted(set(created) - set(seen))
    if missing:
        raise ValueError(f"{len(missing)} of {len(created)} created resources never got one, e.g. {missing[:3]}")
    return [seen[name] - created[name] for name in created]


def median_runs(runs: Iterable[Mapping]) -> dict[tuple[str, int], dict[str, float]]:
    """Median of each measure over the repeats of one (operator, N)."""
    grouped: dict[tuple[str, int], list[Mapping[str, float]]] = {}
    for run in runs:
        grouped.setdefault((run["operator"], run["n"]), []).append(run["measures"])
    medians = {}
    for key, measures in grouped.items():
        names = set().union(*measures)
        medians[key] = {name: statistics.median(m[name] for m in measures if name in m) for name in names}
    return medians


def _cell(value: float | None, unit: str, decimals: int) -> str:
    if value is None:
        return "—"
    return f"{value:.{decimals}f}" + (f" {unit}" if unit else "")


def ratio_table(n: int, medians: Mapping[tuple[str, int], Mapping[str, float]], repeats: int,
                operators: tuple[str, str] = (KUBETUNE, TRAINER_V2)) -> str:
    """Markdown table for N resources: each operator's medians and the first / second ratio
    (below 1: the first operator is lower, i.e. faster or smaller)."""
    first, second = (medians.get((op, n), {}) for op in operators)
    titles = [OPERATOR_TITLES.get(op, op) for op in operators]
    lines = [f"N = {n} (median of {repeats} run{'s' if repeats != 1 else ''})", "",
             f"| measure | {titles[0]} | {titles[1]} | {titles[0]} / {titles[1]} |", "|---|---:|---:|---:|"]
    for key, label, unit, decimals in MEASURES:
        a, b = first.get(key), second.get(key)
        if a is None and b is None:
            continue
        ratio = f"{a / b:.2f}" if a is not None and b not in (None, 0) else "—"
        lines.append(f"| {label} | {_cell(a, unit, decimals)} | {_cell(b, unit, decimals)} | {ratio} |")
    return "\n".join(lines)


def writes_table(n: int, runs: Iterable[Mapping], operators: tuple[str, str] = (KUBETUNE, TRAINER_V2)) -> str:
    """Writes per created resource by resource[/subresource] (median over repeats), largest first."""
    per_op: dict[str, dict[str, list[float]]] = {op: {} for op in operators}
    for run in runs:
        if run["n"] == n and run["operator"] in per_op:
            for resource, count in run["writes"].items():
                per_op[run["operator"]].setdefault(resource, []).append(count / n)
    medians = {op: {r: statistics.median(v) for r, v in by_res.items()} for op, by_res in per_op.items()}
    resources = sorted(set().union(*medians.values()),
                       key=lambda r: (-max(medians[op].get(r, 0) for op in operators), r))
    titles = [OPERATOR_TITLES.get(op, op) for op in operators]
    lines = [f"Writes per resource by resource[/subresource], N = {n}", "",
             f"| resource | {titles[0]} | {titles[1]} |", "|---|---:|---:|"]
    for r in resources:
        cells = [f"{medians[op][r]:.2f}" if r in medians[op] else "—" for op in operators]
        lines.append(f"| {r} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def markdown(results: Mapping, sizes: Iterable[int], repeats: int, operators: Iterable[str]) -> str:
    """The whole report: command, settings, one ratio table and one write breakdown per N."""
    ops = tuple(operators)
    pair = ops if len(ops) == 2 else (KUBETUNE, TRAINER_V2)
    medians = median_runs(results["runs"])
    workers = next((r["details"].get("workers_started") for r in results["runs"]
                    if r["details"].get("workers_started")), None)
    parts = [f"Command: `{results['command']}`", "",
             f"Settings: `{json.dumps(results['settings'], sort_keys=True)}`"]
    if workers:
        parts.append(f"Workers each Go controller started (its log): `{json.dumps(workers, sort_keys=True)}`")
    if "wall_s" in results:
        parts.append(f"Wall time of the whole run: {results['wall_s'] / 60:.1f} min")
    for n in sizes:
        parts += ["", ratio_table(n, medians, repeats, pair), "", writes_table(n, results["runs"], pair)]
    return "\n".join(parts)
