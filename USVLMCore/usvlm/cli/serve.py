"""usvlm serve: run the engine process (the model stays loaded; clients talk HTTP to it).

When it listens it prints one line on stdout, for a parent process to read:

    USVLM-ENGINE LISTENING http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from pathlib import Path

from usvlm.cli._common import add_model_args, count_arg, positive_arg
from usvlm.errors import InputError, USVLMError

LISTENING = "USVLM-ENGINE LISTENING"
DEFAULT_PORT = 8765
GRACEFUL_SHUTDOWN_S = 3


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="run the engine process for the Slicer module or other clients",
                       description="Keep a model loaded and answer segment / refine / classify "
                                   "requests over HTTP (protocol: docs/engine.md). Listens on "
                                   "127.0.0.1 unless --host says otherwise; any other address needs "
                                   "an access token. Every request must carry the token "
                                   "(Authorization: Bearer TOKEN).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=count_arg(0), default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one, see the LISTENING line)")
    p.add_argument("--token", help="access token (visible to other local users in the process "
                                   "list: prefer --token-file or $USVLM_ENGINE_TOKEN)")
    p.add_argument("--token-file", metavar="FILE", help="read the access token from this file")
    add_model_args(p)
    p.add_argument("--batch-size", type=count_arg(1), default=8, help="frames per model batch (default 8)")
    p.add_argument("--threads", type=count_arg(1), help="CPU threads for torch (default: all cores)")
    p.add_argument("--prompt-dir", metavar="DIR", help="prompt bank folder (default: the packaged banks)")
    p.add_argument("--image-cache-mb", type=positive_arg, default=1024,
                   help="memory for images and their features kept between requests (default 1024)")
    p.add_argument("--result-cache-mb", type=positive_arg, default=2048,
                   help="memory for results kept for refine (default 2048)")
    p.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="... and this private key")
    p.add_argument("--exit-with-stdin", action="store_true",
                   help="stop when standard input closes (a parent that starts the engine passes "
                        "a pipe: the engine then never outlives it)")
    return p


def _token(args: argparse.Namespace) -> str | None:
    from usvlm.serve.auth import TOKEN_ENV

    if args.token_file:
        from usvlm.io.bounded_file import read_bounded_file

        data = read_bounded_file(Path(args.token_file), "token", 4096)
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InputError(args.token_file, "the token file is not ASCII text") from None
    return args.token or os.environ.get(TOKEN_ENV) or None


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads (a taken port fails at once)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        if os.name != "nt":  # on Windows SO_REUSEADDR would let another process share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except (OSError, UnicodeError) as exc:
        raise USVLMError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    return sock


def run(args: argparse.Namespace) -> int:
    from usvlm.serve.auth import token_for_bind

    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise InputError(None, "--ssl-certfile and --ssl-keyfile go together")
    token, generated = token_for_bind(args.host, _token(args))
    sock = _bind(args.host, args.port)
    try:
        server, runner = _server(args, sock, token)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if args.ssl_certfile else "http"
    sock.listen(128)  # connections wait in the backlog until the event loop accepts them
    if generated:
        print(f"usvlm serve: access token (give it as 'Authorization: Bearer ...'): {token}",
              file=sys.stderr, flush=True)
    print(f"{LISTENING} {scheme}://{shown}:{port}", flush=True)
    if args.exit_with_stdin:
        threading.Thread(target=_exit_on_eof, args=(server, runner), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # a second Ctrl+C or SIGTERM during shutdown
        pass
    finally:
        runner.shutdown(timeout=2.0)
        sock.close()
    return 0


def _server(args: argparse.Namespace, sock: socket.socket, token: str):  # noqa: ANN202
    import uvicorn

    from usvlm.engine import Segmenter
    from usvlm.model.registry import resolve_model
    from usvlm.serve.app import create_app
    from usvlm.serve.engine_state import EngineState
    from usvlm.serve.jobs import JobRunner

    segmenter = Segmenter(resolve_model(args.model), device=args.device, batch_size=args.batch_size,
                          threads=args.threads, image_cache_mb=args.image_cache_mb)
    state = EngineState(segmenter, prompt_dir=args.prompt_dir, image_store_mb=args.image_cache_mb,
                        result_store_mb=args.result_cache_mb)
    runner = JobRunner()
    config = uvicorn.Config(create_app(state, runner, token), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            server_header=False,
                            ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)

    class EngineServer(uvicorn.Server):
        """Stopping cancels the running job first, so shutdown is not held up by a long cine."""

        def handle_exit(self, sig, frame) -> None:  # noqa: ANN001
            runner.cancel_all()
            super().handle_exit(sig, frame)

    return EngineServer(config), runner


def _exit_on_eof(server, runner) -> None:  # noqa: ANN001
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    runner.cancel_all()
    server.should_exit = True
    # A job stuck in native code must not keep the process alive after its parent has gone.
    threading.Timer(GRACEFUL_SHUTDOWN_S + 5, os._exit, (0,)).start()
