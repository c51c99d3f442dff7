from django.urls import path

from . import views

urlpatterns = [path("", views.tunnels_page, name="tunnels")]
