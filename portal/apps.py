from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "QXaaS portal"

    def ready(self) -> None:
        from .metrics import connect_celery_signals

        connect_celery_signals()  # task outcome/duration metrics and the request ID of the task's log lines
