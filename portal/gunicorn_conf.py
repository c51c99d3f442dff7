"""gunicorn hooks of the portal's listeners (``portal.runstack``: ``-c python:portal.gunicorn_conf``)."""

from __future__ import annotations

import gc
import os

if os.environ.get("LOG_FORMAT", "").lower() == "json":
    # gunicorn's own lines (start-up, worker restarts, the access log) as JSON too, through the portal's handler.
    from portal.logs import logging_config

    logconfig_dict = logging_config("json", os.environ.get("LOG_LEVEL", "INFO"), {})
    logconfig_dict["loggers"] = {name: {"handlers": [], "propagate": True, "level": "INFO"}
                                 for name in ("gunicorn.error", "gunicorn.access")}


def post_worker_init(worker) -> None:
    """Load the whole portal (URLconf, views, serializers), then move everything loaded so far out of the cyclic
    garbage collector's sight with ``gc.freeze()``.

    Those objects live as long as the worker, but a full collection walked every one of them each time: on the
    benchmark machine ~100 ms, every couple of seconds under batch key requests (each allocates thousands of
    short-lived objects, which is what triggers them). Frozen, a full collection only walks what requests made.
    Nothing is shared or cached differently: it only tells the collector not to look at start-up objects.
    """
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports every view module now, before the freeze
    gc.collect()
    gc.freeze()
