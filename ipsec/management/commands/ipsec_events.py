"""``manage.py ipsec_events``: listen to every enabled IPsec gateway's VICI event stream (``ipsec.events``) and
have a tunnel's dropped SA or dead charon looked at at once. Run by ``make run``'s supervisor; stops on SIGTERM."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from ipsec import events


class Command(BaseCommand):
    help = "Listen to the IPsec gateways' VICI events (tunnels going down, re-keys) until stopped."

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        events.run(stop)
