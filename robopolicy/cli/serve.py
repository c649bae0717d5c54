"""`robopolicy serve`: answer chunk requests for a checkpoint over TCP (for `robopolicy deploy --inference server`)."""

from __future__ import annotations

import argparse

from robopolicy.cli.device import add_device_argument, check_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or training run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; no authentication, "
                   "bind to a trusted network only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from robopolicy.runtime.policy_server import PolicyServer

    server = PolicyServer.from_checkpoint(args.checkpoint, args.host, args.port, device=check_device(args.device))
    host, port = server.address
    print(f"serving {args.checkpoint} on {host}:{port} ({args.device}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0
