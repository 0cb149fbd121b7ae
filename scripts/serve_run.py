"""``serve run`` with Ray's Prometheus endpoint on a known port.

    .venv/bin/python scripts/serve_run.py configs/serve.local.yaml    # metrics on http://127.0.0.1:8080/metrics
    .venv/bin/python scripts/serve_run.py --metrics-export-port 9090 configs/serve.local.yaml

``serve run`` starts its local Ray instance with ``ray.init()`` and no way to pass ``_metrics_export_port``
(no flag, no environment variable, nothing in the Serve config), so the metrics agent listens on a random
port. This starts the same local instance first, with the port fixed, then hands every other argument to
``serve run``, which uses the running instance; Ctrl-C shuts Serve and that instance down as ``serve run``
alone does. (``serve run``'s ``--runtime-env``/``--working-dir`` only apply to an instance it starts itself:
they are ignored here.)
"""

from __future__ import annotations

import argparse
import sys

import ray
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.scripts import cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--metrics-export-port", type=int, default=8080)
    args, serve_run_args = parser.parse_known_args()
    ray.init(namespace=SERVE_NAMESPACE, _metrics_export_port=args.metrics_export_port)
    cli(["run", *serve_run_args], prog_name="serve")


if __name__ == "__main__":
    sys.exit(main())
