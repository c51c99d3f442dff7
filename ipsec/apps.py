from django.apps import AppConfig


class IpsecConfig(AppConfig):
    name = "ipsec"
    verbose_name = "Quantum-keyed IPsec tunnels"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from services import orders

        from . import checks, services  # noqa: F401 - checks registers the /readyz line
        from .models import Tunnel

        orders.register(Tunnel, expire=services.expire, maintain=services.maintain)
        from services import network

        network.register_gateway_reporter("ipsec", services.gateway_report)
