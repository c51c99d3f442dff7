"""`make mutate`: mutation testing (cosmic-ray) of the security- and money-critical modules against their tests.

Each module is mutated in a private copy of the work tree (cosmic-ray edits files in place), its tests run
once per mutant, and the share of mutants killed is reported per module, with every survivor's diff in
var/mutate/<module>.survivors.txt. Slow (minutes per module): not part of `make test`.

    .venv/bin/python scripts/mutate.py                       # every module below
    .venv/bin/python scripts/mutate.py tenants/tokens.py ... # some of them

The tests run on the embedded defaults (SQLite, no Redis) unless DATABASE_URL/REDIS_URL are set: the
PostgreSQL-only tests then skip, which is what makes a run per mutant affordable.
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
                          "tests/services/test_token_lifecycle.py"],
    "services/keyids.py": ["tests/services/test_keyids.py", "tests/services/test_keyids_bounds.py"],
    "services/orders.py": ["tests/services/test_orders.py", "tests/services/test_orders_edges.py"],
    "tenants/quota.py": ["tests/tenants/test_quota.py"],
    "tenants/tenancy.py": ["tests/tenants/test_isolation.py", "tests/tenants/test_api.py"],
    "services/authentication.py": ["tests/services/test_header_trust.py", "tests/services/test_mtls.py"],
    "services/saes.py": ["tests/services/test_cross_tenant.py", "tests/services/test_gateway.py"],
    "services/pki.py": ["tests/services/test_header_trust.py", "tests/services/test_gateway.py"],
    "services/delivery.py": ["tests/services/test_gateway.py", "tests/services/test_take_key.py"],
    "services/streams.py": ["tests/services/test_streams.py"],
    "qrng/health.py": ["tests/qrng/test_health.py"],
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


def run_module(module: str, tests: list[str], timeout: float) -> dict:
    cr = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="qxaas-mutate-") as tmp:
        work = Path(tmp) / "src"
        copy_tree(work)
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env.update(PYTHONPATH=str(work), QXAAS_VAR_DIR=str(Path(tmp) / "var"))
        test_command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(tests)}"
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
        baseline = subprocess.run(test_command.split(), cwd=work, env=env, capture_output=True, text=True)
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
    still = 0
    for survivor in result["survivors"]:
        title, _, diff = survivor.partition("\n")
        diff = diff.split("--- mutation diff ---\n", 1)[-1].rstrip("\n") + "\n"
        with tempfile.TemporaryDirectory(prefix="qxaas-recheck-") as tmp:
            work = Path(tmp) / "src"
            copy_tree(work)
            before = (work / module).read_text()
            subprocess.run(["patch", "-s", "-p1"], input=diff, text=True, cwd=work, check=True)
            assert (work / module).read_text() != before, f"the mutant did not apply: {title}"
            env = {k: v for k, v in os.environ.items() if k != "CI"}
            env.update(PYTHONPATH=str(work), QXAAS_VAR_DIR=str(Path(tmp) / "var"))
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                  *MODULES[module]], cwd=work, env=env, capture_output=True, text=True)
        killed = run.returncode != 0
        still += not killed
        print(f"{'killed  ' if killed else 'SURVIVES'} {title}", flush=True)
    tested = result["tested"]
    print(f"{module}: after re-check {tested - still}/{tested} killed ({round(100 * (tested - still) / tested, 1)} %)")
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
