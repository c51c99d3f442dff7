"""`make mutate`: mutation testing (cosmic-ray) of the security- and money-critical modules against their tests.

Each module is mutated in a private copy of the work tree (cosmic-ray edits files in place), its tests run
once per mutant, and the share of mutants killed is reported per module, with every survivor's diff in
var/mutate/<module>.survivors.txt. Slow (minutes per module): not part of `make test`.

    .venv/bin/python scripts/mutate.py                       # every module below
    .venv/bin/python scripts/mutate.py tenants/tokens.py ... # some of them

The tests run on the embedded defaults (SQLite, no Redis) unless DATABASE_URL/REDIS_URL are set: the
PostgreSQL-only tests then skip, which is what makes a run per mutant affordable. Modules with paths of their own
on PostgreSQL (quota's pipelined statements) are measured with the services started, as `make test` starts them:

    bash -c '. scripts/services.sh; start_services mutate; nice -n 19 make mutate MODULE=tenants/quota.py'

One test database serves every mutant of a run (pytest-django's --reuse-db; a mutant never changes the schema):
creating it from the migrations cost more than the tests themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "mutate"

# module -> the tests that are about it (run once per mutant, stopping at the first failure)
MODULES: dict[str, list[str]] = {
    "tenants/scoping.py": ["tests/tenants/test_isolation.py", "tests/tenants/test_scoping_edges.py",
                           "tests/services/test_cross_tenant.py"],
    "tenants/tokens.py": ["tests/tenants/test_tokens.py", "tests/tenants/test_token_management.py",
                          "tests/tenants/test_token_narrowing.py", "tests/tenants/test_security.py",
                          "tests/services/test_token_lifecycle.py"],
    "services/keyids.py": ["tests/services/test_keyids.py", "tests/services/test_keyids_bounds.py"],
    "services/orders.py": ["tests/services/test_orders.py", "tests/services/test_orders_edges.py"],
    "tenants/quota.py": ["tests/tenants/test_quota.py", "tests/tenants/test_reservations.py",
                         "tests/tenants/test_quota_edges.py"],
    "tenants/tenancy.py": ["tests/tenants/test_isolation.py", "tests/tenants/test_api.py"],
    "services/authentication.py": ["tests/services/test_header_trust.py",
                                   "tests/services/test_authentication_edges.py", "tests/services/test_mtls.py"],
    "services/saes.py": ["tests/services/test_cross_tenant.py", "tests/services/test_gateway.py"],
    "services/pki.py": ["tests/services/test_header_trust.py", "tests/services/test_gateway.py"],
    "services/delivery.py": ["tests/services/test_gateway.py", "tests/services/test_take_key.py"],
    "services/streams.py": ["tests/services/test_streams.py"],
    "qrng/health.py": ["tests/qrng/test_health.py"],
    "billing/rating.py": ["tests/billing/test_rating.py", "tests/billing/test_close_and_credit.py"],
    "billing/invoices.py": ["tests/billing/test_rating.py", "tests/billing/test_close_and_credit.py",
                            "tests/billing/test_api.py"],
}

# Operators whose mutants are nearly all equivalent or absurd here (e.g. ``x + 1`` -> ``x << 1`` is a
# different mutant from ``x - 1`` but tells nothing more). cosmic-ray's other operators all run.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_\w+_(Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceBinaryOperator_(Pow|RShift|LShift|BitOr|BitAnd|BitXor)_\w+$",
]


def copy_tree(dest: Path) -> None:
    """The work tree as it is now (tracked and new files, not ignored ones) into ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def test_environment(tmp: Path, work: Path) -> tuple[dict[str, str], str]:
    """The environment and pytest options of a run in ``tmp``: the work copy first on the path, and one test
    database for every mutant (on SQLite a file in ``tmp``, as the default test database lives in memory)."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=f"{tmp}{os.pathsep}{work}", QXAAS_VAR_DIR=str(tmp / "var"))
    (tmp / "mutate_settings.py").write_text(
        "from portal.settings.test import *  # noqa: F403\n"
        f"if DATABASES['default']['ENGINE'].endswith('sqlite3'):  # noqa: F405\n"
        f"    DATABASES['default']['TEST'] = {{'NAME': {str(tmp / 'test.sqlite3')!r}}}  # noqa: F405\n")
    return env, "--ds=mutate_settings --reuse-db"


def run_module(module: str, tests: list[str], timeout: float) -> dict:
    cr = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="qxaas-mutate-") as tmp:
        work = Path(tmp) / "src"
        copy_tree(work)
        env, options = test_environment(Path(tmp), work)
        test_command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {options} {' '.join(tests)}"
        config = Path(tmp) / "cosmic-ray.toml"
        config.write_text(
            "[cosmic-ray]\n"
            f'module-path = "{module}"\n'
            f"timeout = {timeout}\n"
            "excluded-modules = []\n"
            f"test-command = {json.dumps(test_command)}\n"
            "[cosmic-ray.distributor]\nname = \"local\"\n"
            "[cosmic-ray.filters.operators-filter]\n"
            f"exclude-operators = {json.dumps(EXCLUDED_OPERATORS)}\n"
        )
        session = Path(tmp) / "session.sqlite"
        # The unmutated tests must pass; this run also creates the test database the mutants reuse.
        baseline = subprocess.run([*test_command.split(), "--create-db"], cwd=work, env=env, capture_output=True,
                                  text=True)
        if baseline.returncode != 0:
            return {"module": module, "error": "the tests fail before any mutation:\n" + baseline.stdout[-3000:]}
        subprocess.run([cr / "cosmic-ray", "init", config, session], cwd=work, env=env, check=True)
        subprocess.run([cr / "cr-filter-operators", session, config], cwd=work, env=env, check=True)
        subprocess.run([cr / "cosmic-ray", "exec", config, session], cwd=work, env=env, check=True)
        dump = subprocess.run([cr / "cosmic-ray", "dump", session], cwd=work, env=env, check=True,
                              capture_output=True, text=True).stdout
    counts = {"killed": 0, "survived": 0, "incompetent": 0, "skipped": 0}
    survivors = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if result is None or str(result.get("worker_outcome")).lower() == "skipped":
            counts["skipped"] += 1  # filtered out (excluded operator)
            continue
        outcome = str(result["test_outcome"]).lower()
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "survived":
            mutation = item["mutations"][0]
            survivors.append(f"{mutation['operator_name']} at line {mutation['start_pos'][0]}\n{result['diff']}")
    tested = counts["killed"] + counts["survived"]
    return {"module": module, **counts, "tested": tested,
            "killed_share": round(100 * counts["killed"] / tested, 1) if tested else None, "survivors": survivors}


def recheck(module: str) -> int:
    """Apply each survivor of the last run of ``module`` (var/mutate/) to a private copy of the current tree and
    run the module's tests against it: which survivors the tests written since then kill."""
    result = json.loads((OUT / f"{module.replace('/', '.')}.json").read_text())
    still = stale = 0
    with tempfile.TemporaryDirectory(prefix="qxaas-recheck-") as tmp:
        work = Path(tmp) / "src"
        copy_tree(work)
        env, options = test_environment(Path(tmp), work)
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *options.split(),
                   *MODULES[module]]
        baseline = subprocess.run([*command, "--create-db"], cwd=work, env=env, capture_output=True, text=True)
        if baseline.returncode != 0:
            print(f"{module}: the tests fail before any mutation:\n{baseline.stdout[-3000:]}")
            return 1
        original = (work / module).read_text()
        for survivor in result["survivors"]:
            title, _, diff = survivor.partition("\n")
            diff = diff.split("--- mutation diff ---\n", 1)[-1].rstrip("\n") + "\n"
            (work / module).write_text(original)
            patched = subprocess.run(["patch", "-s", "-p1", "--no-backup-if-mismatch", "-r", "-"], input=diff,
                                     text=True, cwd=work, capture_output=True)
            if patched.returncode != 0 or (work / module).read_text() == original:
                stale += 1  # the module changed since that run: measure it anew
                print(f"STALE    {title}", flush=True)
                continue
            run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
            killed = run.returncode != 0
            still += not killed
            print(f"{'killed  ' if killed else 'SURVIVES'} {title}", flush=True)
    tested = result["tested"] - stale
    print(f"{module}: after re-check {tested - still}/{tested} killed ({round(100 * (tested - still) / tested, 1)} %)"
          + (f", {stale} survivors no longer apply" if stale else ""))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--recheck"]:
        for module in argv[1:]:
            recheck(module)
        return 0
    modules = argv or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"unknown modules: {', '.join(unknown)}; known: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("MUTATE_TIMEOUT", "180"))
    failed = False
    for module in modules:
        result = run_module(module, MODULES[module], timeout)
        name = module.replace("/", ".")
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
        if "error" in result:
            print(f"{module}: {result['error']}")
            failed = True
            continue
        (OUT / f"{name}.survivors.txt").write_text("\n".join(result["survivors"]))
        print(f"{module}: {result['killed']}/{result['tested']} mutants killed ({result['killed_share']} %), "
              f"{result['survived']} survived, {result['incompetent']} incompetent, "
              f"{result['skipped']} excluded by operator", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
