import json
import os
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from services import registry, saes
from services.models import Sae
from tenants.models import Tenant

DEMO_SAES = {"demo-cait": "CAIT", "demo-rect": "Rectorado"}


class Command(BaseCommand):
    help = ("Give the demo tenant SAEs at CAIT and Rectorado and write fresh certificate bundles to "
            "QXAAS_VAR_DIR/demo-saes/ (waits for the embedded twin to be up).")

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the twin")

    def handle(self, *args, **options) -> None:
        endpoints = registry.twin_endpoints_file()
        deadline = time.monotonic() + options["wait"]
        while not endpoints.exists():
            if time.monotonic() > deadline:
                raise CommandError(f"the QKD network twin did not come up ({endpoints} missing)")
            time.sleep(0.2)
        registry.register_twin(json.loads(endpoints.read_text()))
        tenant = Tenant.objects.get(slug="demo-lab")
        out = Path(settings.VAR_DIR) / "demo-saes"
        out.mkdir(mode=0o700, exist_ok=True)
        for name, node in DEMO_SAES.items():
            sae = Sae.objects.for_tenant(tenant).filter(name=name).first()
            # Private keys are never stored: each run issues a fresh certificate (the old one retires).
            bundle = saes.reissue_certificate(sae) if sae else saes.register_sae(tenant, name, node)
            (out / f"{name}.crt").write_text(bundle.certificate)
            key_path = out / f"{name}.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(bundle.private_key)
            (out / "ca.crt").write_text(bundle.ca_chain)
        port = settings.ETSI_HTTPS_PORT
        self.stdout.write(
            f"Demo SAEs demo-cait (CAIT) and demo-rect (Rectorado); bundles in {out}/\n"
            f"  curl --cacert {out}/ca.crt --cert {out}/demo-cait.crt --key {out}/demo-cait.key \\\n"
            f"       https://127.0.0.1:{port}/api/v1/keys/demo-rect/enc_keys\n"
        )
