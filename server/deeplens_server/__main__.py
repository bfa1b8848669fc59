"""``deeplens-server``: runs the gRPC API with settings from the environment (``DEEPLENS_*``)."""

from __future__ import annotations

import asyncio
import logging

from deeplens_server.app import serve
from deeplens_server.config import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(Settings()))


if __name__ == "__main__":
    main()
