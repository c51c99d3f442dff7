from django.apps import AppConfig


class ServicesConfig(AppConfig):
    name = "services"
    verbose_name = "Services: QKD key delivery"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401 - registers the SD-QKD readiness check
            identities,
            metrics,  # noqa: F401 - registers the orders' and the QKD network's /metrics series
            orders,
            streams,
        )
        from .models import KeyStream

        orders.register(KeyStream, expire=streams.expire, maintain=streams.fill_streams)
        identities.connect_signals()  # the key gateway's cached identities go when one changes
