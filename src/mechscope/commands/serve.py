"""`mechscope serve`: the local dashboard (feature browser, feature pages, prompt page,
circuits) in a browser. Maps onto `mechscope.server.dashboard`; no science here.

    mechscope serve --store runs/store --model zoo:pycode --port 8000
    mechscope serve --store runs/store --host 0.0.0.0 --token SECRET     # others on the network
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", nargs="+", default=[], metavar="STORE", help="feature store folders to browse")
    parser.add_argument("--model", help="hub id, local folder, or zoo:NAME: enables the prompt page")
    parser.add_argument("--circuit", nargs="+", default=[], metavar="DIR", help="saved circuits to show as graphs")
    parser.add_argument("--probe", metavar="DIR", help="a confidence probe (mechscope confidence) for the prompt page")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (other than local needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one; the URL is printed)")
    parser.add_argument("--token", help="bearer token every request must send (required off 127.0.0.1)")
    parser.add_argument("--max-prompt-tokens", type=int, default=256, help="longest prompt the prompt page takes")


def execute(args: argparse.Namespace) -> int:
    from ..server.core import check_bind, serve_forever
    from ..server.dashboard import dashboard_app
    from ..server.dashboard_prompt import load_probe

    check_bind(args.host, args.token)  # before loading anything
    model = None
    if args.model:
        from ..models.loading import load

        model = load(args.model)
    app = dashboard_app(
        args.store,
        model=model,
        circuits=args.circuit,
        probe=load_probe(args.probe),
        token=args.token,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    serve_forever(
        app, args.host, args.port, args.token, announce=lambda url: print(f"mechscope dashboard: {url}", flush=True)
    )
    return 0
