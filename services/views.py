"""The services' web pages: the QKD network drawn (and each link's history), the tenant's SAEs (a page each:
bundle shown once, re-issue, revoke) and key streams (open with QoS, a page each: live state, close).

Views stay thin: the logic is in ``saes``, ``streams``, ``network``, ``linkhistory`` and ``netpicture``."""

from __future__ import annotations

import math
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from portal.errors import ApiError
from tenants import charts
from tenants.tenancy import TenantContext, web_tenant

from . import linkhistory, netpicture, saes, streams
from .models import KeyDelivery, KeyStream, QkdNode, Sae
from .network import network_view
from .sdqkd import etsi004_spec as spec


def _network(request: HttpRequest) -> dict[str, Any]:
    """The network view for the page (never an exception: a network that cannot be reached is said so)."""
    try:
        network = network_view(include_internal=request.user.is_staff)
    except ApiError as exc:
        return {"nodes": [], "links": [], "telemetry": False, "error": exc.message}
    linkhistory.record(network.get("links", []))
    for link in network.get("links", []):
        link["qber_percent"] = 100 * link["qber"] if isinstance(link.get("qber"), (int, float)) else None
        link["aborted"] = linkhistory.aborted(link)
        cap = link.get("key_store_capacity_bits") or 0
        link["fill_percent"] = round(100 * (link.get("key_store_fill_bits") or 0) / cap) if cap else None
    return network


def _writer(ctx: TenantContext | None) -> TenantContext:
    """The tenant context of someone who may change the tenant's SAEs and streams (the API's keys:write)."""
    if ctx is None:
        raise ApiError("you are not a member of any tenant yet")
    if "keys:write" not in ctx.scopes:
        raise ApiError("your role cannot change SAEs or key streams")
    return ctx


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"  # may hold a freshly issued private key
    return response


# -- the network ---------------------------------------------------------------------------------------------
@login_required
def network_page(request: HttpRequest) -> HttpResponse:
    network = _network(request)
    return render(request, "services/network.html", {
        "tenant_context": web_tenant(request), "network": network, "picture": netpicture.draw(network)})


@login_required
def network_fragment(request: HttpRequest) -> HttpResponse:
    """The picture and the link table alone, refreshed in place every few seconds."""
    network = _network(request)
    return render(request, "services/_network.html", {"network": network, "picture": netpicture.draw(network)})


@login_required
def link_page(request: HttpRequest, link_id: str) -> HttpResponse:
    network = _network(request)
    link = next((k for k in network.get("links", []) if k.get("id") == link_id), None)
    samples = linkhistory.history(link_id, minutes=int(request.GET.get("minutes", "30") or 30))
    if link is None and not samples:
        raise Http404("no such link")
    return render(request, "services/link.html", {
        "tenant_context": web_tenant(request), "link": link, "link_id": link_id, "network": network,
        **_link_charts(samples)})


@login_required
def link_fragment(request: HttpRequest, link_id: str) -> HttpResponse:
    network = _network(request)
    link = next((k for k in network.get("links", []) if k.get("id") == link_id), None)
    return render(request, "services/_link.html", {
        "link": link, "link_id": link_id, "network": network, **_link_charts(linkhistory.history(link_id))})


def _link_charts(samples: list) -> dict[str, Any]:
    rate = [(s.at, s.secret_key_rate_bps or 0.0) for s in samples]
    qber = [(s.at, 100 * s.qber) for s in samples if s.qber is not None]
    fill = [(s.at, s.key_store_fill_bits or 0) for s in samples]
    aborted = [(s.at, s.aborted_blocks) for s in samples if s.aborted_blocks is not None]
    return {
        "samples": len(samples),
        "rate_chart": charts.line_chart(rate, title="Secret key rate", unit="bit/s"),
        "qber_chart": charts.line_chart(qber, title="QBER", unit="%", color="#b35c00"),
        "fill_chart": charts.line_chart(fill, title="Key store fill", unit="bits", color="#2b8a3e"),
        "aborted_chart": charts.line_chart(aborted, title="Aborted blocks (cumulative)", unit="blocks",
                                           color="#c92a2a") if aborted else None,
    }


# -- SAEs ----------------------------------------------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def services_page(request: HttpRequest) -> HttpResponse:
    """The tenant's SAEs (register: bundle shown once on the new SAE's page) and recent key deliveries."""
    ctx = web_tenant(request)
    if request.method == "POST":
        try:
            ctx = _writer(ctx)
            bundle = saes.register_sae(ctx.tenant, request.POST.get("name", "").strip(), request.POST.get("node", ""))
            messages.success(request, f"SAE {bundle.sae.name} registered.")
            return _no_store(_sae_response(request, ctx, bundle.sae, bundle))
        except ApiError as exc:
            messages.error(request, exc.message)
    context: dict[str, Any] = {"tenant_context": ctx, "nodes": QkdNode.objects.filter(enabled=True)}
    if ctx is not None:
        context["saes"] = Sae.objects.for_tenant(ctx.tenant).select_related("node").order_by("name")
        context["deliveries"] = KeyDelivery.objects.for_tenant(ctx.tenant).select_related(
            "master", "slave").order_by("-created_at")[:20]
    return _no_store(render(request, "services/services.html", context))


def _tenant_sae(ctx: TenantContext | None, name: str) -> Sae:
    sae = saes.tenant_sae_named(ctx.tenant, name) if ctx is not None else None
    if sae is None:
        raise Http404("no such SAE")
    return sae


def _sae_response(request: HttpRequest, ctx: TenantContext, sae: Sae, bundle: saes.SaeBundle | None) -> HttpResponse:
    streams_of = KeyStream.objects.for_tenant(ctx.tenant).filter(source=sae) | KeyStream.objects.for_tenant(
        ctx.tenant).filter(destination=sae)
    deliveries = KeyDelivery.objects.for_tenant(ctx.tenant).filter(master=sae).count()
    return render(request, "services/sae.html", {
        "tenant_context": ctx, "sae": sae, "bundle": bundle, "deliveries": deliveries,
        "streams": streams_of.select_related("source", "destination").order_by("-created_at")[:10],
        "others": Sae.objects.for_tenant(ctx.tenant).exclude(pk=sae.pk).order_by("name"),
        "base": request.build_absolute_uri("/").rstrip("/")})


@login_required
def sae_page(request: HttpRequest, name: str) -> HttpResponse:
    ctx = web_tenant(request)
    return _no_store(_sae_response(request, ctx, _tenant_sae(ctx, name), None))


@login_required
@require_POST
def sae_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    """Re-issue the certificate (the new bundle is shown once) or revoke it."""
    ctx = web_tenant(request)
    sae = _tenant_sae(ctx, name)
    bundle = None
    try:
        ctx = _writer(ctx)
        if action == "reissue":
            bundle = saes.reissue_certificate(sae)
            messages.success(request, f"A new certificate was issued for {sae.name}: the old one no longer works.")
        elif action == "revoke":
            saes.revoke_certificate(sae)
            messages.success(request, f"The certificate of {sae.name} is revoked.")
        else:
            raise Http404("no such action")
    except ApiError as exc:
        messages.error(request, exc.message)
    if bundle is None:
        return redirect("sae", name=sae.name)
    return _no_store(_sae_response(request, ctx, sae, bundle))


# -- key streams ---------------------------------------------------------------------------------------------
QOS_FIELDS = ("Key_chunk_size", "Min_bps", "Max_bps", "TTL", "Timeout", "Jitter", "Priority")


def _limits(network: dict[str, Any]) -> dict[str, Any]:
    rates = [k.get("secret_key_rate_bps") or 0 for k in network.get("links", []) if k.get("state") == "up"]
    return {"max_chunk_bytes": spec.MAX_CHUNK_BYTES, "max_ttl_s": spec.MAX_TTL_S,
            "max_timeout_ms": spec.MAX_TIMEOUT_MS, "best_link_bps": math.floor(max(rates, default=0))}


@login_required
@require_http_methods(["GET", "POST"])
def streams_page(request: HttpRequest) -> HttpResponse:
    """The tenant's key streams, and a form to open one (QoS fields, the backend's limits shown)."""
    ctx = web_tenant(request)
    qos_values = {k: request.POST.get(k, spec.QOS_DEFAULTS[k]) for k in QOS_FIELDS}
    if request.method == "POST":
        try:
            ctx = _writer(ctx)
            source = saes.tenant_sae(ctx.tenant, request.POST.get("source", ""), "source")
            qos = {}
            for field in QOS_FIELDS:
                try:
                    qos[field] = int(request.POST.get(field) or spec.QOS_DEFAULTS[field])
                except ValueError:
                    raise ApiError(f"{field} must be a whole number") from None
            answer = streams.open_connect(source, {"source": f"sae://{source.name}",
                                                   "destination": f"sae://{request.POST.get('destination', '')}",
                                                   "QoS": qos})
            if answer.get("Key_stream_ID") and answer.get("status") == 1:
                messages.success(request, "Key stream opened: waiting for the destination SAE to connect.")
                return redirect("stream", ksid=answer["Key_stream_ID"])
            raise ApiError(f"the KME did not open the stream (ETSI 004 status {answer.get('status')}); "
                           f"it offers QoS {answer.get('QoS')}")
        except ApiError as exc:
            messages.error(request, exc.message)
    network = _network(request)
    context: dict[str, Any] = {"tenant_context": ctx, "limits": _limits(network), "qos": qos_values,
                               "qos_fields": QOS_FIELDS}
    if ctx is not None:
        context["saes"] = Sae.objects.for_tenant(ctx.tenant).select_related("node").order_by("name")
        context["streams"] = KeyStream.objects.for_tenant(ctx.tenant).select_related(
            "source", "destination").order_by("-created_at")[:50]
        context["source"] = request.POST.get("source", "")
        context["destination"] = request.POST.get("destination", "")
    return render(request, "services/streams.html", context)


def _tenant_stream(ctx: TenantContext | None, ksid) -> KeyStream:
    stream = None if ctx is None else KeyStream.objects.for_tenant(ctx.tenant).select_related(
        "source__node", "destination__node").filter(ksid=ksid).first()
    if stream is None:
        raise Http404("no such key stream")
    return stream


def _stream_context(request: HttpRequest, ctx: TenantContext, stream: KeyStream) -> dict[str, Any]:
    chunk_bits = 8 * int(stream.qos.get("Key_chunk_size", 0))
    return {"tenant_context": ctx, "stream": stream, "live": stream.is_live, "chunk_bits": chunk_bits,
            "bits_metered": chunk_bits * stream.chunks_metered,
            "base": request.build_absolute_uri("/").rstrip("/")}


@login_required
def stream_page(request: HttpRequest, ksid) -> HttpResponse:
    ctx = web_tenant(request)
    return render(request, "services/stream.html", _stream_context(request, ctx, _tenant_stream(ctx, ksid)))


@login_required
def stream_fragment(request: HttpRequest, ksid) -> HttpResponse:
    ctx = web_tenant(request)
    return render(request, "services/_stream.html", _stream_context(request, ctx, _tenant_stream(ctx, ksid)))


@login_required
@require_POST
def stream_action(request: HttpRequest, ksid, action: str) -> HttpResponse:
    """Close the stream (as its source SAE), or connect its destination SAE (the peer's open_connect)."""
    ctx = web_tenant(request)
    stream = _tenant_stream(ctx, ksid)
    try:
        _writer(ctx)
        body = {"Key_stream_ID": str(stream.ksid)}
        if action == "close":
            streams.close(stream.source, body)
            messages.success(request, "Key stream closed.")
        elif action == "connect":
            answer = streams.open_connect(stream.destination, {
                **body, "source": f"sae://{stream.destination.name}", "destination": f"sae://{stream.source.name}",
                "QoS": {k: v for k, v in stream.qos.items() if k in spec.QOS_DEFAULTS}})
            if answer.get("status") not in (0, 1):
                raise ApiError(f"the peer could not connect (ETSI 004 status {answer.get('status')}: "
                               f"{answer.get('message', 'no reason given')})")
            messages.success(request, f"{stream.destination.name} connected: the stream delivers keys.")
        else:
            raise Http404("no such action")
    except ApiError as exc:
        messages.error(request, exc.message)
    return redirect("stream", ksid=stream.ksid)


@login_required
def live_fragment(request: HttpRequest) -> HttpResponse:
    """The tenant's live key streams (the dashboard's "live services", refreshed in place)."""
    ctx = web_tenant(request)
    live = [] if ctx is None else list(KeyStream.objects.for_tenant(ctx.tenant).filter(
        state__in=KeyStream.live_states).select_related("source", "destination").order_by("-created_at")[:20])
    return render(request, "services/_live.html", {"streams": live})
