from django.core.management.base import BaseCommand

from billing.demo import bootstrap_billing_demo


class Command(BaseCommand):
    help = "Give the default plans a first price book and record the MadQCI asset costs (idempotent; make run)."

    def handle(self, *args, **options) -> None:
        created = bootstrap_billing_demo()
        self.stdout.write("Billing demo: " + (", ".join(created) if created else "already set up"))
