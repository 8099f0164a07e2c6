"""Metric names in PromQL expressions, and the names the operator exports, for checking one against the other.

promtool validates the syntax (tests call `promtool check rules`); this lexer only finds the
metric names, which promtool cannot list.
"""

from __future__ import annotations

import re

from prometheus_client.metrics import MetricWrapperBase

# Label lists after these keywords hold label names, not metrics.
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_STRINGS = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
# Grafana's label_values(metric, label): only the first argument is PromQL.
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.DOTALL)
_SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
                    "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (also from Grafana's label_values and query_result)."""
    if (m := _LABEL_VALUES.match(expr)) is not None:
        expr = m.group(1)
    expr = _STRINGS.sub('""', expr)
    expr = _MATCHERS.sub(" ", expr)
    expr = _RANGES.sub(" ", expr)
    expr = _LABEL_LISTS.sub(" ", expr)
    names = set()
    for word in _WORD.finditer(expr):
        before = expr[word.start() - 1] if word.start() else " "
        if before.isdigit() or before in ".$":
            continue  # the unit of a number (1e3, 5m) or a Grafana variable
        if expr[word.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if word.group(0).lower() in _KEYWORDS:
            continue
        names.add(word.group(0))
    return names


def exported_names(module: object) -> set[str]:
    """Every sample name the metrics defined in `module` can put on /metrics (with _total, _bucket, ...)."""
    names = set()
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type]}
    return names


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval and template variables replaced by values PromQL parses."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
