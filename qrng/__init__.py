"""QRNG entropy as a service: the plain-Python core (health, sources, pool, formats, quality, service) and
its Django layer (runtime, delivery, reports, tasks, API, pages). See docs/qrng.md."""
