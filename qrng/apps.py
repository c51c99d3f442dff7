from django.apps import AppConfig


class QrngConfig(AppConfig):
    name = "qrng"
    verbose_name = "QRNG entropy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401 - registers the QRNG_SOURCES system check
            metrics,  # noqa: F401 - registers the QRNG's /metrics series
        )
