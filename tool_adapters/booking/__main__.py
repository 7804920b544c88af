"""Serve the stand-in booking service by hand: ``python -m tool_adapters.booking --port 8025``."""

from __future__ import annotations

import argparse

import uvicorn

from tool_adapters.booking.service import create_service


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tool_adapters.booking",
        description="Run the in-memory booking service the booking adapter talks to.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8025, help="port (the adapter's default)")
    args = parser.parse_args(argv)
    uvicorn.run(create_service(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
