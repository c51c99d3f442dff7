"""The API's one pagination: ``?page=`` and ``?page_size=`` are validated as the schema documents them."""

from __future__ import annotations

from rest_framework.pagination import PageNumberPagination

from portal.errors import BadRequest


def _positive_int(raw: str, name: str, maximum: int | None = None) -> int:
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if value < 1 or (maximum is not None and value > maximum):
        limit = f"1..{maximum}" if maximum else "1 or more"
        raise BadRequest(f"{name} must be an integer, {limit}", details={name: raw[:40]})
    return value


class StandardPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        return _positive_int(raw, self.page_size_query_param, self.max_page_size)

    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param)
        if raw is not None:
            _positive_int(raw, self.page_query_param)  # a page past the last stays a 404 (documented)
        return super().paginate_queryset(queryset, request, view)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
        return parameters
