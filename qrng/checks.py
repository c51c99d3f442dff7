"""System check: the operator's QRNG_SOURCES must parse and build, so a typo fails at start, not per request."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_qrng_sources(app_configs=None, **kwargs) -> list[Error]:
    if not settings.QRNG_SOURCES:
        return []  # the embedded twin's simulated QRNG
    from qrng.sources import build_source_set

    try:
        configs = json.loads(settings.QRNG_SOURCES)
        if not isinstance(configs, list) or not configs:
            raise ValueError("it must be a non-empty JSON list of sources")
        build_source_set(configs).close()  # builds objects only: no device is opened, no request is sent
    except (ValueError, TypeError) as exc:
        return [Error(f"QRNG_SOURCES is invalid: {exc}", hint="see docs/qrng.md, 'Sources'", id="qrng.E001")]
    return []
