"""The `kubetune` command line.

Subcommands are registered by the packages that own them, so the operator
image (no torch) and the trainer image share one entry point: a package that
is not installed simply contributes no commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Modules that may add subcommands through a `register(subparsers)` function.
COMMAND_MODULES = ("kubetune_trainer.commands", "kubetune.operator_commands")


def _crds(args: argparse.Namespace) -> int:
    from kubetune.api.crdgen import crd_files

    out = Path(args.out)
    files = crd_files()
    if args.check:
        stale = [name for name, text in files.items() if not (out / name).is_file() or (out / name).read_text() != text]
        extra = sorted(p.name for p in out.glob("*.yaml") if p.name not in files) if out.is_dir() else []
        if stale or extra:
            print(f"crds/ is stale: {', '.join(stale + extra)}; run `make crds`", file=sys.stderr)
            return 1
        print(f"crds/ is up to date ({len(files)} files)")
        return 0
    if args.stdout:
        print("---\n".join(files.values()), end="")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Self-serve LLM fine-tuning and serving on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser("crds", help="generate the CustomResourceDefinitions from the typed API")
    crds.add_argument("--out", default="crds", help="directory to write (default: crds)")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files in --out differ from the models")
    crds.add_argument("--stdout", action="store_true", help="print a multi-document YAML instead of writing files")
    crds.set_defaults(func=_crds)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only "that package is not installed here" is tolerated; a broken import is a bug.
            if err.name is None or not name.startswith(err.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
