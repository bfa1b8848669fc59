"""``deeplens-worker``: runs an arq worker with settings from the environment (``DEEPLENS_*``)."""

from __future__ import annotations

import logging

from arq.worker import Worker
from deeplens_server.config import Settings

from deeplens_worker.jobs import worker_options


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Worker(**worker_options(Settings())).run()


if __name__ == "__main__":
    main()
