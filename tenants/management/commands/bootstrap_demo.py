import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from tenants.demo import bootstrap_demo


class Command(BaseCommand):
    help = "Create the default plans, a demo operator and a demo tenant with an API token (idempotent)."

    def handle(self, *args, **options) -> None:
        creds = bootstrap_demo()
        token_file = Path(settings.VAR_DIR) / "demo-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(creds.token + "\n")
        passwords = Path(settings.VAR_DIR) / "demo-passwords"
        if creds.operator_password or creds.researcher_password:
            fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"operator {creds.operator_password}\nresearcher {creds.researcher_password}\n")
        shown = passwords.read_text() if passwords.exists() else "(see ./var/demo-passwords)\n"
        if creds.operator_totp:
            second = ("The operator's second factor (TOTP) is pre-enrolled for the demo; the current code:\n"
                      "  QXAAS_DEMO=1 .venv/bin/python manage.py demo_totp   (demo only: refused without QXAAS_DEMO)\n")
        else:
            second = "The operator enrols TOTP (an authenticator app) at the first sign-in.\n"
        self.stdout.write(
            f"Demo tenant: {creds.tenant}\n"
            f"Sign-in at /accounts/login/ (username password):\n{shown}{second}"
            f"API token for tenant {creds.tenant} (also in {token_file}):\n  {creds.token}\n"
        )
