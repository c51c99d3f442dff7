"""The TLS sessions page: state, endpoints, rotation history (key IDs), how to connect and the API in curl."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from tenants.tenancy import web_tenant

from .models import TlsSession


@login_required
def sessions_page(request: HttpRequest, session_uuid=None) -> HttpResponse:
    ctx = web_tenant(request)
    context: dict = {"tenant_context": ctx, "sessions": [], "session": None,
                     "api_base": request.build_absolute_uri("/api/tls/sessions")}
    if ctx is not None:
        sessions = TlsSession.objects.for_tenant(ctx.tenant).select_related("node_a", "node_b")
        context["sessions"] = sessions[:50]
        if session_uuid is not None:
            session = sessions.prefetch_related("rotations").filter(uuid=session_uuid).first()
            if session is None:
                raise Http404("no such TLS session")
            context["session"] = session
    elif session_uuid is not None:
        raise Http404("no such TLS session")
    return render(request, "tls/sessions.html", context)


@login_required
def live_fragment(request: HttpRequest) -> HttpResponse:
    """The tenant's live TLS sessions (the dashboard's "live services", refreshed in place)."""
    ctx = web_tenant(request)
    live = [] if ctx is None else list(TlsSession.objects.for_tenant(ctx.tenant).filter(
        state__in=TlsSession.live_states).select_related("node_a", "node_b").order_by("-created_at")[:20])
    return render(request, "tls/_live.html", {"sessions": live})
