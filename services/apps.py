from django.apps import AppConfig


class ServicesConfig(AppConfig):
    name = "services"
    verbose_name = "Services: QKD key delivery"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the SD-QKD readiness check
