"""``deeplens-worker``: runs an arq worker with settings from the environment (``DEEPLENS_*``)."""

from __future__ import annotations

from arq.worker import Worker
from deeplens_server.config import Settings
from deeplens_server.logs import configure_logging

from deeplens_worker.jobs import worker_options


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format)
    Worker(**worker_options(settings)).run()


if __name__ == "__main__":
    main()
