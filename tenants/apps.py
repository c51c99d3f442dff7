from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants, quotas and metering"

    def ready(self) -> None:
        from . import (
            metrics,  # noqa: F401 - registers the tenants' /metrics series
            schema,  # noqa: F401 - registers the OpenAPI auth extension
        )
        from .audit import connect_sign_in_signals

        connect_sign_in_signals()
