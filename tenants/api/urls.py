from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash="/?")
router.register("tenants", views.TenantViewSet, basename="tenant")
router.register("plans", views.PlanViewSet, basename="plan")
router.register("members", views.MembershipViewSet, basename="member")
router.register("invitations", views.InvitationViewSet, basename="invitation")
router.register("tokens", views.ApiTokenViewSet, basename="token")
router.register("usage", views.UsageRecordViewSet, basename="usage")
router.register("audit", views.AuditEventViewSet, basename="audit")
router.register("operator/audit", views.OperatorAuditViewSet, basename="operator-audit")

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    path("me/invitations/", views.MyInvitationsView.as_view(), name="my-invitations"),
    path("me/invitations/<int:pk>/accept/", views.AnswerInvitationView.as_view(answer="accept"),
         name="invitation-accept"),
    path("me/invitations/<int:pk>/decline/", views.AnswerInvitationView.as_view(answer="decline"),
         name="invitation-decline"),
    path("quotas/", views.QuotaView.as_view(), name="quotas"),
    *router.urls,
]
