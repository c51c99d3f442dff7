"""The floors run one way: a lower floor never imports a higher one (docs/architecture.md).

    floor 0  portal (the kernel: errors, health, Celery app, pagination; and the shell around it)
    floor 1  tenants
    floor 2  services, qrng
    floor 3  ipsec, tls
    floor 4  billing

Every module's imports are read from its source (``ast``), wherever they are written: at the top, inside a
function (a lazy import is still a dependency) or under ``if TYPE_CHECKING`` (for the floors; a type-only import
never runs, so it makes no import cycle). The rules:

- an app imports only its own modules, apps on lower floors, and portal's kernel modules (``KERNEL``);
- apps on one floor do not import each other (services and qrng, ipsec and tls); nothing imports billing;
- portal imports no app: it names them by string (``INSTALLED_APPS``, ``include("tenants.urls")``, the beat
  schedule, ``runstack``'s commands); only ``portal.urls`` could import an app's urlconf module;
- ``services.sdqkd`` (the QKD network twin and its clients, run without Django) imports no Django and nothing
  of the portal's apps outside ``services.sdqkd``;
- no import cycle between the project's modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"portal": 0, "tenants": 1, "services": 2, "qrng": 2, "ipsec": 3, "tls": 3, "billing": 4}
APPS = {name for name, floor in FLOORS.items() if floor > 0}
# The part of portal the apps build on. The rest of portal (settings, urls, runstack, wsgi, middleware, context
# processors, the API root page) is the shell: it runs the apps, they never import it.
KERNEL = {"portal.errors", "portal.health", "portal.celery_app", "portal.api.pagination"}
URLCONFS = {f"{app}.urls" for app in APPS} | {f"{app}.api.urls" for app in APPS}
TWIN = "services.sdqkd"
DJANGO_FAMILY = {"django", "rest_framework", "drf_spectacular", "drf_spectacular_sidecar", "allauth", "environ",
                 "django_celery_beat", "whitenoise", "celery"}


# --- reading a tree ----------------------------------------------------------------------------------------------
def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def read_tree(root: Path, packages: Iterable[str] = FLOORS, *, type_only: bool = True) -> dict[str, set[str]]:
    """{module: the names it imports} for every module of ``packages`` under ``root``. A name is the project
    module it resolves to (``from services import saes`` -> ``services.saes``), else the name as written.
    ``type_only=False`` leaves out the imports under ``if TYPE_CHECKING:`` (they never run)."""
    sources = {module_name(p, root): p for pkg in packages if (root / pkg).is_dir()
               for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        is_package = path.name == "__init__.py"
        names: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = set() if type_only else _type_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    names.add(sub if sub in sources else target)
        graph[module] = names
    return graph


# --- the rules ---------------------------------------------------------------------------------------------------
def _top(name: str) -> str:
    return name.split(".")[0]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of the floors, as ``"importer -> imported: why"``."""
    found = []
    for module, names in sorted(graph.items()):
        here = _top(module)
        for name in sorted(names):
            there = _top(name)
            why = None
            if _within(module, TWIN) and (there in DJANGO_FAMILY or there.startswith("django_")):
                why = "services.sdqkd runs without Django"
            elif _within(module, TWIN) and there in FLOORS and not _within(name, TWIN):
                why = "services.sdqkd imports nothing of the portal's apps"
            elif there not in FLOORS or there == here:
                continue
            elif here == "portal":
                if not (module == "portal.urls" and name in URLCONFS):
                    why = "portal (the shell and kernel) imports no app"
            elif there == "portal":
                if name not in KERNEL:
                    why = f"apps import only portal's kernel ({', '.join(sorted(KERNEL))})"
            elif there == "billing":
                why = "nothing imports billing"
            elif FLOORS[there] > FLOORS[here]:
                why = f"upward: {here} (floor {FLOORS[here]}) imports {there} (floor {FLOORS[there]})"
            elif FLOORS[there] == FLOORS[here]:
                why = f"{here} and {there} share floor {FLOORS[here]} and do not import each other"
            if why:
                found.append(f"{module} -> {name}: {why}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles between the graph's own modules (strongly connected components, Tarjan), each sorted."""
    edges = {m: sorted(n for n in names if n in graph and n != m) for m, names in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        # Iterative depth-first search: (node, position in its edge list).
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(found)


# --- the tree --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree() -> dict[str, set[str]]:
    graph = read_tree(ROOT)
    assert {"portal.errors", "tenants.models", "services.models", "qrng.models", "services.sdqkd.twin.kme"} <= set(
        graph), "the checker reads the project's modules"
    return graph


def test_no_import_breaks_the_floors(tree):
    assert violations(tree) == []


def test_no_import_cycles():
    assert cycles(read_tree(ROOT, type_only=False)) == []


# --- the test of the test --------------------------------------------------------------------------------------
def test_the_checker_catches_every_kind_of_break():
    graph = {
        "portal.errors": {"logging", "tenants.models"},                  # the kernel importing an app
        "portal.urls": {"tenants.urls", "services.views"},               # urlconf fine, a view module not
        "tenants.models": {"django.db", "portal.errors", "services.models"},  # upward
        "tenants.views": {"portal.urls"},                                # an app importing the shell
        "services.models": {"tenants.models", "qrng.models"},            # same floor
        "qrng.models": {"tenants.models"},                               # fine
        "ipsec.tunnels": {"tls.sessions", "services.delivery"},          # same floor; downward is fine
        "tls.sessions": {"billing.invoices"},                            # billing
        "services.sdqkd.twin.kme": {"django.conf", "services.models", "services.sdqkd.twin.store"},
    }
    assert violations(graph) == [
        "ipsec.tunnels -> tls.sessions: ipsec and tls share floor 3 and do not import each other",
        "portal.errors -> tenants.models: portal (the shell and kernel) imports no app",
        "portal.urls -> services.views: portal (the shell and kernel) imports no app",
        "services.models -> qrng.models: services and qrng share floor 2 and do not import each other",
        "services.sdqkd.twin.kme -> django.conf: services.sdqkd runs without Django",
        "services.sdqkd.twin.kme -> services.models: services.sdqkd imports nothing of the portal's apps",
        "tenants.models -> services.models: upward: tenants (floor 1) imports services (floor 2)",
        "tenants.views -> portal.urls: apps import only portal's kernel "
        "(portal.api.pagination, portal.celery_app, portal.errors, portal.health)",
        "tls.sessions -> billing.invoices: nothing imports billing",
    ]
    assert cycles({"a": {"b"}, "b": {"c", "os"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}) == [["a", "b", "c"]]


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    """A function-level import from a higher floor, written as a relative import too, is found in a real tree."""
    files = {
        "tenants/__init__.py": "",
        "tenants/models.py": "from portal.errors import BadRequest\n",
        "tenants/quota.py": "def f():\n    from services.models import Sae\n    return Sae\n",
        "services/__init__.py": "",
        "services/models.py": "from tenants import models\nfrom . import saes\n",
        "services/saes.py": "from .models import Sae\n",
        "services/keys.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .views import V\n",
        "services/views.py": "from services import keys\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = read_tree(tmp_path)
    assert graph["services.models"] == {"tenants.models", "services.saes"}
    assert violations(graph) == ["tenants.quota -> services.models: upward: tenants (floor 1) imports services "
                                 "(floor 2)"]
    assert cycles(graph) == [["services.keys", "services.views"], ["services.models", "services.saes"]]
    assert cycles(read_tree(tmp_path, type_only=False)) == [["services.models", "services.saes"]]
