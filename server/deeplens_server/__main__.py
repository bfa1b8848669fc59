"""``deeplens-server``: runs the gRPC API with settings from the environment (``DEEPLENS_*``)."""

from __future__ import annotations

import asyncio

from deeplens_server.app import serve
from deeplens_server.config import Settings
from deeplens_server.logs import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
