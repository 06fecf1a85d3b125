"""``ditlab serve RUN_OR_MODEL_DIR [...]``: a local web page and HTTP API for sampling (``ditlab.serve``,
docs/serve.md). Binds to 127.0.0.1:7860 unless told otherwise."""
from __future__ import annotations

import argparse
import ipaddress
import socket

NAME = "serve"
HELP = "a local web page and HTTP API that generate with one or more trained runs or model folders"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="RUN_OR_MODEL_DIR",
                        help="run directories (`ditlab train`) or model folders (`ditlab convert`); the page offers "
                             "a picker when several are given")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default loopback only; anything else is reachable by others)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--autoencoder", default=None, help="autoencoder for model folders that name none")
    parser.add_argument("--text-encoder", dest="text_encoder", default=None,
                        help="text encoder for model folders that name none")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--max-num", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--max-steps", type=int, default=1000, help="sampler steps per request (default 1000)")
    parser.add_argument("--max-cfg", type=float, default=20.0, help="largest guidance scale (default 20)")
    parser.add_argument("--queue-size", type=int, default=32,
                        help="requests that may wait; more are refused with HTTP 429 (default 32)")
    parser.add_argument("--concurrency", type=int, default=1, help="generations running at once (default 1)")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="images of waiting same-settings requests run as one batch (default 64; 1 = no batching)")
    parser.add_argument("--keep-jobs", type=int, default=64, help="finished results kept for download (default 64)")
    parser.add_argument("--preview-every", type=int, default=0,
                        help="steps between live previews (default 0: about 8 per generation)")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))


def _check_args(args: argparse.Namespace):
    from ditlab.errors import UserError
    from ditlab.serve import Limits

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    for flag in ("max_num", "max_steps", "queue_size", "concurrency", "max_batch", "keep_jobs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.preview_every < 0:
        raise UserError(f"--preview-every must be >= 0, got {args.preview_every}")
    if not args.max_cfg >= 0:
        raise UserError(f"--max-cfg must be >= 0, got {args.max_cfg}")
    return Limits(max_num=args.max_num, max_steps=args.max_steps, max_cfg=args.max_cfg, queue_size=args.queue_size,
                  concurrency=args.concurrency, max_batch=max(args.max_batch, args.max_num), keep_jobs=args.keep_jobs,
                  preview_every=args.preview_every)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """A one-line UserError when the address is taken or cannot be bound, before the models load."""
    from ditlab.errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UserError(f"--host {host!r} is not an address of this machine: use 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}): pass another --port") from None


def run(args: argparse.Namespace) -> int:
    import warnings

    limits = _check_args(args)
    _check_port(args.host, args.port)
    if not is_loopback(args.host):
        warnings.warn(f"--host {args.host} is not loopback: anyone who can reach this machine can use the page and "
                      "the API (no authentication); see docs/serve.md", stacklevel=1)

    import uvicorn

    from ditlab.devices import pick_device
    from ditlab.serve import create_app, load_models

    models = load_models(args.models, device=pick_device(args.device), ema=not args.no_ema,
                         autoencoder=args.autoencoder, text_encoder=args.text_encoder)
    from ditlab.serve.guards import LOOPBACK_HOSTS

    allowed = (*LOOPBACK_HOSTS, args.host.lower()) if is_loopback(args.host) else None  # against DNS rebinding
    app = create_app(models, limits, allowed_hosts=allowed)
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"serving {', '.join(models.pipelines)} at http://{shown}:{args.port}/ (API docs: /docs; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
