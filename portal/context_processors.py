from django.conf import settings


def portal(request) -> dict:
    return {"QXAAS_VERSION": settings.QXAAS_VERSION,
            "EMBEDDED_DEFAULT": not settings.DATABASES["default"]["ENGINE"].endswith("postgresql")}
