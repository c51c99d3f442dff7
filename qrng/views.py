"""Web pages: "Entropy" for researchers (sources, health, capabilities, curl examples, quality reports)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_http_methods

from portal.errors import ApiError
from qrng import delivery, formats, quality, reports, runtime, tasks
from qrng.models import QualityReport
from qrng.service import provenance_headers
from tenants.models import WRITING_ROLES
from tenants.tenancy import web_tenant


@login_required
@require_http_methods(["GET", "POST"])
def entropy_page(request: HttpRequest) -> HttpResponse:
    ctx = web_tenant(request)
    if request.method == "POST" and ctx is not None:
        try:
            if request.POST.get("reset") and request.user.is_staff:
                closed = runtime.reset_source(request.POST["reset"], request.user)
                messages.success(request, f"Source {request.POST['reset']} reset ({closed} alarms closed).")
                return redirect("entropy")
            if ctx.role not in WRITING_ROLES and not request.user.is_staff:
                raise ApiError("your role cannot start quality reports")
            report = reports.start_report(ctx.tenant, int(request.POST.get("bytes") or quality.DEFAULT_REPORT_BYTES),
                                          request.POST.get("source", ""), request.user,
                                          enqueue=tasks.run_quality_report.delay)
            return redirect("entropy-quality-report", report_id=report.id)
        except ApiError as exc:
            messages.error(request, exc.message)
        except ValueError:
            messages.error(request, "bytes must be a whole number")
    capabilities = runtime.capabilities()
    context = {
        "tenant_context": ctx,
        "capabilities": capabilities,
        "base_url": request.build_absolute_uri("/api/").rstrip("/"),
        "default_report_bytes": quality.DEFAULT_REPORT_BYTES,
        "max_report_bytes": quality.MAX_REPORT_BYTES,
    }
    if ctx is not None:
        context["reports"] = QualityReport.objects.for_tenant(ctx.tenant)[:20]
    return render(request, "qrng/entropy.html", context)


WEB_DOWNLOAD_FORMATS = ("raw", "hex", "base64")


@login_required
def entropy_download(request: HttpRequest) -> HttpResponse:
    """Download entropy from the page (signed in): the API's metered stream, as a file."""
    ctx = web_tenant(request)
    try:
        if ctx is None or "entropy:read" not in ctx.scopes:
            raise ApiError("your role cannot draw entropy")
        encoding = request.GET.get("format", "raw")
        if encoding not in WEB_DOWNLOAD_FORMATS:
            raise ApiError(f"format must be one of {', '.join(WEB_DOWNLOAD_FORMATS)}")
        try:
            n = int(request.GET.get("bytes", ""))
        except ValueError:
            raise ApiError("bytes must be a whole number") from None
        if not 1 <= n <= formats.MAX_STREAM_BYTES:
            raise ApiError(f"bytes must be 1..{formats.MAX_STREAM_BYTES}")
        request_id = delivery.new_request_id()
        body = delivery.MeteredStream(ctx.tenant, n, encoding, request_id)
    except ApiError as exc:
        messages.error(request, exc.message)
        return redirect("entropy")
    response = StreamingHttpResponse(body, content_type="application/octet-stream",
                                     headers=provenance_headers(body.provenance, request_id))
    response["Content-Length"] = str(body.content_length())
    extension = "bin" if encoding == "raw" else "txt"
    response["Content-Disposition"] = f'attachment; filename="entropy-{request_id}.{extension}"'
    return response


@login_required
def quality_report_page(request: HttpRequest, report_id) -> HttpResponse:
    ctx = web_tenant(request)
    report = None if ctx is None else QualityReport.objects.for_tenant(ctx.tenant).filter(pk=report_id).first()
    if report is None:
        raise Http404("no such report")
    # report_svg builds its markup itself and escapes every text it takes from the report.
    plot = mark_safe(quality.report_svg(report.result)) if report.state == QualityReport.State.DONE else None  # noqa: S308
    template = "qrng/_quality_report.html" if request.GET.get("fragment") else "qrng/quality_report.html"
    return render(request, template, {
        "tenant_context": ctx, "report": report, "plot": plot,
        "tests": (report.result or {}).get("tests", []), "percent": round(report.progress * 100),
    })
