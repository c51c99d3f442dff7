"""``/api/``: links to every collection (by URL name, so the kernel imports no app)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse


@extend_schema(summary="API root: links to every collection", responses={200: dict})
@api_view(["GET"])
@permission_classes([AllowAny])
def api_root(request, format=None) -> Response:
    links = {name: reverse(name, request=request) for name in ("me", "quotas", "tenant-list", "plan-list",
                                                                  "member-list", "token-list", "usage-list")}
    links.update(schema=reverse("schema", request=request), docs=reverse("swagger-ui", request=request))
    return Response(links)
