"""The floors of geomopt: every module imports only from its own package, from packages on its floor, or from
packages on floors below (``tests/test_architecture.py`` checks every import, lazy ones inside functions too).

``FLOORS`` lists the floors bottom up; each is a tuple of top-level names under ``geomopt`` (a subpackage or a
single module; ``""`` is the package root ``geomopt/__init__.py``). ``docs/architecture.md`` states the same
table.
"""

from __future__ import annotations

FLOORS: tuple[tuple[str, ...], ...] = (
    ("checks", "native", "floors", "figures", "tables", "nn", "data"),
    ("geometry", "curvature"),
    ("optim", "measures", "prune", "implicit"),
    ("train",),
    ("runs",),
    ("sweep", "report"),
    ("experiments",),
    ("cli", "__main__", ""),
)


def floor_of(module: str) -> int:
    """The floor (0 = bottom) of a dotted module name under ``geomopt`` (``"geomopt.nn.init"`` -> 0).

    Raises:
        ValueError: the name is not under ``geomopt``, or its top-level package is on no floor.
    """
    parts = module.split(".")
    if parts[0] != "geomopt":
        raise ValueError(f"{module!r} is not a geomopt module")
    top = parts[1] if len(parts) > 1 else ""
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise ValueError(f"geomopt.{top} is on no floor of geomopt.floors.FLOORS; add it to the table (and to "
                     "docs/architecture.md)")
