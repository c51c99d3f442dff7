from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"  # like the other /api/ paths for scripts: the trailing slash is optional
router.register("tunnels", views.TunnelViewSet, basename="tunnel")

urlpatterns = router.urls
