"""`lookalike serve`: the web demo (JSON API + page) over one gallery; see docs/server.md."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from ..errors import LookalikeError
from . import options as opt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web demo: search a gallery from the browser (page + JSON API)")
    p.add_argument("--gallery", required=True, help="gallery folder made by `lookalike extract`")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs --allow-remote)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed at start)")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host: the demo has no authentication"
    )
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default 10)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch/FAISS threads of each compute job (default: one per core)"
    )
    p.add_argument(
        "--compute-slots",
        type=int,
        default=1,
        help="compute jobs (decode+embed+search) run at once (default 1, using all --threads)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help=(
            "largest upload in pixels as decoded, width × height (default 4096² = 16.8 M; JPEGs decode reduced); each"
            " costs CPU in proportion"
        ),
    )
    opt.database(p)
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local (default), or ray: the gallery's ivfpq-ondisk indexes searched by Ray actors holding their parts",
    )
    p.add_argument(
        "--address", default=None, help="ray: cluster address (auto, ray://host:port); default starts a local cluster"
    )
    opt.search_actors(p)
    p.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen before the (slow) model load, so a busy port fails at once with a clear message.

    Connections that arrive while the gallery loads wait in the backlog instead of being refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto TCP: asyncio then sets TCP_NODELAY on each connection
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LookalikeError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port (0 picks a free one) or"
            " --host"
        ) from exc
    sock.listen(2048)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    from ..gallery import open_gallery

    if not is_loopback(args.host) and not args.allow_remote:
        raise LookalikeError(
            f"--host {args.host} would expose the demo (no authentication) beyond this machine; "
            "add --allow-remote if that is what you want, or keep the default 127.0.0.1"
        )
    if args.max_upload_mb <= 0:
        raise LookalikeError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.compute_slots < 1:
        raise LookalikeError(f"--compute-slots must be at least 1, got {args.compute_slots}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise LookalikeError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    if args.port < 0 or args.port > 65535:
        raise LookalikeError(f"--port must be 0..65535, got {args.port}")
    open_gallery(args.gallery)  # a missing or inconsistent gallery fails here, before torch is even imported
    if args.engine == "ray":
        from ..distributed import connected, fan_out

        with connected(args.address):  # held while the server runs: its actors live in this session
            return _serve(args, fan_out(args.actors))
    return _serve(args, None)


def _serve(args: argparse.Namespace, engine) -> int:
    sock = listen(args.host, args.port)
    try:
        import uvicorn

        from ..serve import ServerConfig, create_app
        from ..serve.service import LOOPBACK_HOSTS

        config = ServerConfig(
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            threads=args.threads,
            compute_slots=args.compute_slots,
            database=args.database,
            engine=engine,
            **({"max_pixels": args.max_pixels} if args.max_pixels is not None else {}),
            # Bound to loopback: answer only to loopback names (DNS rebinding). --allow-remote: any name.
            allowed_hosts=LOOPBACK_HOSTS if is_loopback(args.host) else None,
        )
        app = create_app(args.gallery, config)
        service = app.state.service
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"lookalike serve: http://{shown}:{port}/  (API: /openapi.json)", flush=True)
        print(f"  {service.gallery.provenance()}", flush=True)
        for warning in service.warnings():
            print(f"  ⚠ {warning}", flush=True)
        print(f"  searched: {service.searcher.describe_database()}", flush=True)
        for note in service.notes:
            print(f"  note: {note}", flush=True)
        print(f"  methods: {', '.join(service.methods)}; press Ctrl-C to stop", flush=True)
        verbose = getattr(args, "verbose", False)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose))
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("lookalike serve: stopped", file=sys.stderr)
    return 0
