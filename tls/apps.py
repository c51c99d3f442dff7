from django.apps import AppConfig


class TlsConfig(AppConfig):
    name = "tls"
    verbose_name = "TLS sessions keyed by QKD"

    def ready(self) -> None:
        from services import orders

        from . import services
        from .models import TlsSession

        # The supervisor runs inside the one service-order beat job (every 2 s, in a worker).
        orders.register(TlsSession, expire=services.expire, maintain=services.supervise)
        from services import network

        network.register_gateway_reporter("tls", services.gateway_report)
