from django.core.management.base import BaseCommand, CommandError

from tenants.demo import DemoRefused, demo_totp_code


class Command(BaseCommand):
    help = ("Print the demo operator's current TOTP code (the second factor make run pre-enrolled). Demo only: "
            "refused without QXAAS_DEMO or under the production settings.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", default="operator", help="the demo operator's username (default operator)")

    def handle(self, *args, user: str, **options) -> None:
        try:
            code, valid_s = demo_totp_code(user)
        except DemoRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(code)
        self.stderr.write(f"(current for {valid_s} more s; each code signs in once)")
