"""`kubetune operator`: registered into the shared CLI (see kubetune.cli)."""

from __future__ import annotations

import argparse
import sys


GLOB_CHARS = set("*?[]!")


def _operator(args: argparse.Namespace) -> int:
    # kopf would treat "team-*" as a pattern and watch Namespace objects to expand it, which needs a
    # cluster-wide grant the namespace-scoped install (Roles only) does not give: names only.
    patterns = [ns for ns in args.namespace if GLOB_CHARS & set(ns)]
    if patterns:
        print(f"kubetune operator: --namespace takes namespace names, not patterns: {', '.join(patterns)}",
              file=sys.stderr)
        return 2
    from kubetune.operator_main import run  # imports kopf only when the operator runs

    return run(namespaces=[] if args.all_namespaces else args.namespace,
               metrics_port=args.metrics_port, liveness_port=args.liveness_port)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("operator", help="run the FineTuneJob operator (kopf)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[],
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--liveness-port", type=int, default=8081, help="liveness probe port for /healthz (0: off)")
    parser.set_defaults(func=_operator)
