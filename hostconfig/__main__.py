"""CLI: render every gateway file from the stack outputs, for users who manage the host themselves.

    pulumi stack output --json --show-secrets > outputs.json
    python -m hostconfig render --outputs outputs.json --out DIR [--legacy]
    python -m hostconfig status -s dev     (or --outputs outputs.json): both ends' view of the tunnels
    pulumi stack output --json --show-secrets | python -m hostconfig render --outputs - --out DIR

Files land under DIR mirroring their paths on the gateway (DIR/etc/swanctl/conf.d/hybrid-vpn.conf, ...), with their
modes (files holding PSKs 0600, created so from the start). --legacy adds ipsec.conf/ipsec.secrets under DIR/legacy/.
Exit status: 0 written, 2 bad input (every problem listed), 1 other failure. PSK values are never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from hostconfig.plan import GatewayPlan, PlanError
from hostconfig.render import RenderedFile, RenderError, render_gateway_files, render_legacy_files
from hostconfig.stack_outputs import InputError, load_host_config

log = logging.getLogger(__name__)

def write_tree(out: Path, files: list[RenderedFile]) -> list[Path]:
    """Write each file under `out` at its gateway path, atomically, created with its final mode."""
    written = []
    for f in files:
        target = out / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # 0600 from the start
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(f.content)
            os.chmod(tmp, f.mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def cmd_render(args: argparse.Namespace) -> int:
    try:
        plan = GatewayPlan.from_host_config(load_host_config(args.outputs))
    except (InputError, PlanError) as exc:
        print(f"hostconfig: {exc}", file=sys.stderr)
        return 2
    try:
        groups = [(Path(args.out), render_gateway_files(plan))]
        if args.legacy:
            groups.append((Path(args.out) / "legacy", render_legacy_files(plan)))
    except RenderError as exc:
        print(f"hostconfig: {exc}", file=sys.stderr)
        return 1
    for root, files in groups:
        for f, path in zip(files, write_tree(root, files), strict=True):
            note = ", secret" if f.secret else ""
            print(f"wrote {path} (0{f.mode:o}{note}, {len(f.content)} bytes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hostconfig", description="hybrid-vpn gateway configuration")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is decided (never secrets)")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render every gateway file into a directory")
    render.add_argument(
        "--outputs",
        required=True,
        metavar="FILE",
        help="`pulumi stack output --json --show-secrets` saved to FILE, or - for standard input",
    )
    render.add_argument("--out", required=True, metavar="DIR", help="directory to write into (mirrors gateway paths)")
    render.add_argument(
        "--legacy",
        action="store_true",
        help="also render ipsec.conf and ipsec.secrets for the legacy starter into DIR/legacy/",
    )
    render.set_defaults(func=cmd_render)
    from hostconfig.opsview import add_parser as add_status_parser

    add_status_parser(sub)  # `status`: AWS's and the gateway's view of the tunnels (hostconfig/opsview.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
