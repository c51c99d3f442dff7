"""The conformance probe runs against the twin's KMEs and the portal's ETSI 014 listener: reuse their fixtures."""

from tests.services.conftest import backend_twin, https_and_web, https_portal, make_lab, network  # noqa: F401
from tests.tenants.conftest import client_for, make_tenant, make_user, member, plan  # noqa: F401 - fixtures
from tests.twin.conftest import twin_factory  # noqa: F401 - fixture
