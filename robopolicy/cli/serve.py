"""`robopolicy serve`: answer chunk requests for a checkpoint over TCP (for `robopolicy deploy --inference server`)."""

from __future__ import annotations

import argparse

from robopolicy.cli.device import add_device_argument, check_device
from robopolicy.config_parsing import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint or training run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; no authentication, "
                   "bind to a trusted network only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument("--peer-timeout", type=float, default=10.0,
                   help="seconds a client may take to send one request (or read one reply) once it has started; "
                        "slower clients are dropped (default: %(default)s)")
    p.add_argument("--max-request-mb", type=float, default=64.0,
                   help="largest request body in MiB; larger ones are refused unread (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; 1 when the server shares a few CPU cores with a control "
                        "loop: a chunk took 3.4 s with 2 contended threads, 80 ms with one)")
    p.add_argument("--task", metavar="INSTRUCTION",
                   help="instruction of a language-conditioned policy for requests that send none (a request's "
                        "meta 'task' always wins)")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from robopolicy.runtime.policy_server import PolicyServer

    if not args.peer_timeout > 0 or not args.max_request_mb > 0 or args.threads < 0:
        raise ConfigError(f"--peer-timeout and --max-request-mb must be > 0 and --threads >= 0, got "
                          f"{args.peer_timeout}, {args.max_request_mb} and {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # binds before loading the model: a busy port fails at once (ServerAddressError, exit 2)
    server = PolicyServer.from_checkpoint(args.checkpoint, args.host, args.port, device=check_device(args.device),
                                          frame_timeout_s=args.peer_timeout, default_task=args.task,
                                          max_body_bytes=int(args.max_request_mb * (1 << 20)))
    host, port = server.address
    print(f"serving {args.checkpoint} on {host}:{port} ({args.device}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0
