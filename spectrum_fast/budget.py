"""A budget: how much of the candidates may train, as a limit a selection must stay within (the
strategies and components.allocate)."""

from __future__ import annotations

from .errors import SelectionError


def budget_limit(budget, total: int | float, label: str, unit: str = "parameters") -> float:
    """The most a selection may use: ``budget`` as a count (int >= 1, at most ``total``) or a fraction
    in (0, 1] of ``total``. ``unit`` names what is counted, for the error message."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise SelectionError(f"{label}: budget must be a count (int >= 1) or a fraction in (0, 1] of the "
                             f"{total:,} candidate {unit}, got {budget!r}")
    if isinstance(budget, int):
        if not 1 <= budget <= total:
            raise SelectionError(f"{label}: budget {budget:,} is outside 1 to the {total:,} candidate {unit}: give a "
                                 f"count in that range or a fraction in (0, 1]")
        return float(budget)
    if not 0 < budget <= 1:
        raise SelectionError(f"{label}: budget {budget!r} is not a fraction in (0, 1] of the {total:,} candidate "
                             f"{unit}: give e.g. 0.25, or an int count")
    return budget * total
