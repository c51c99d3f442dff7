import time

from django.core.management.base import BaseCommand, CommandError

from tenants.demo import DemoRefused, demo_totp_code

MAX_WAIT_S = 30  # one TOTP period at most


class Command(BaseCommand):
    help = ("Print the demo operator's current TOTP code (the second factor make run pre-enrolled). Demo only: "
            "refused without QXAAS_DEMO or under the production settings.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", default="operator", help="the demo operator's username (default operator)")
        parser.add_argument("--min-valid", type=int, default=0, metavar="SECONDS",
                            help="if the code expires sooner than this, wait for the next one (at most 30 s)")

    def handle(self, *args, user: str, min_valid: int, **options) -> None:
        try:
            code, valid_s = demo_totp_code(user)
            if valid_s < min(min_valid, MAX_WAIT_S):
                time.sleep(valid_s + 0.5)  # the next period's code
                code, valid_s = demo_totp_code(user)
        except DemoRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(code)
        self.stderr.write(f"(current for {valid_s} more s; each code signs in once)")
