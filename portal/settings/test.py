"""Test settings: the base settings with fast hashing and in-memory email."""

from .base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; tests only
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Each test run starts with an empty cache (allauth keeps its rate limits there); Redis itself is
# exercised by the tests that need it, through REDIS_URL.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Tests decide which bytes a source serves and when; the ones about the filler thread start it themselves.
QRNG_POOL_FILLER_THREAD = False
# Tests serve static files from the apps' folders (no collectstatic step), so pages render with their assets in the
# browser tests; the empty STATIC_ROOT keeps WhiteNoise from warning on every request handler it builds.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405
