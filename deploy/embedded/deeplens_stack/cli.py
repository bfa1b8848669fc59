"""``deeplens-stack up|down|status|demo``: the embedded stack from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from deeplens_stack.stack import DEFAULT_DATA_DIR, Stack, StackConfig, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deeplens-stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "demo"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where all state lives")
    parser.add_argument("--port-base", type=int, default=50000, help="ports are this plus fixed offsets")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    stack = Stack(StackConfig(data_dir=ns.data_dir, port_base=ns.port_base))
    try:
        if ns.command == "up":
            t0 = time.monotonic()
            timings = stack.up()
            detail = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
            print(f"stack ready in {time.monotonic() - t0:.1f} s ({detail})")
            print(f"gRPC endpoint: {stack.config.grpc_target}; logs in {stack.data_dir / 'logs'}")
        elif ns.command == "down":
            t0 = time.monotonic()
            stopped = stack.down()
            print(f"stopped {', '.join(stopped) or 'nothing'} in {time.monotonic() - t0:.1f} s")
        elif ns.command == "status":
            for service, state in stack.status().items():
                print(f"{service:<10} {state}")
        else:
            from deeplens_stack.demo import run_demo

            return run_demo(stack)
    except StackError as err:
        print(f"deeplens-stack: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
