from django.conf import settings


def portal(request) -> dict:
    return {"QXAAS_VERSION": "0.1.0", "EMBEDDED_DEFAULT": not settings.DATABASES["default"]["ENGINE"].endswith(
        "postgresql")}
