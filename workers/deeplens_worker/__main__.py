"""``deeplens-worker``: runs arq worker processes (``DEEPLENS_WORKER_PROCESSES``; by default one per available
core) with settings from the environment (``DEEPLENS_*``)."""

from __future__ import annotations

import sys

from deeplens_server.config import Settings
from deeplens_server.logs import configure_logging

from deeplens_worker.processes import Supervisor, process_count


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format)
    processes = process_count(settings)
    if processes > 1:
        sys.exit(Supervisor(settings, processes).run())
    # Imported here: a supervising parent never loads the pipeline (numpy, OpenCV, the stores' clients).
    from arq.worker import Worker

    from deeplens_worker.jobs import worker_options

    Worker(**worker_options(settings)).run()


if __name__ == "__main__":
    main()
