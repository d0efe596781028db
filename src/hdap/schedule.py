"""When a recurring run fires: Kubeflow Pipelines' cron, checked and explained before it is sent.

Kubeflow's cron has six fields, seconds first (`0 0 3 * * 1`: Mondays at 03:00:00), or a
descriptor (`@weekly`, `@every 168h`). A five-field Unix cron (`0 3 * * 1`) is accepted by the API
but read shifted by one field, its minute as the second and so on: another schedule than the one
written. hdap refuses it, giving the six-field form that means what was written.
"""

from __future__ import annotations

import re

from hdap.errors import HdapError

# (name, low, high, names allowed in place of numbers)
FIELDS = (("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
          ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
          ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")))
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EVERY = re.compile(r"^@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_DAYS = ("Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays")


def check_cron(expression: str) -> str:
    """The expression, stripped, if Kubeflow reads it as written; else HdapError in one sentence."""
    cron = " ".join(expression.split())
    if cron in DESCRIPTORS or _EVERY.match(cron):
        return cron
    fields = cron.split(" ")
    if len(fields) == 5:
        six = f"0 {cron}"
        raise HdapError(f"cron '{cron}' has five fields, but Kubeflow's cron has six, seconds first, and would read it shifted "
                        f"by one: write '{six}' ({explain_cron(six)}).")
    if len(fields) != 6:
        raise HdapError(f"cron '{cron}' has {len(fields)} fields: Kubeflow's cron has six, seconds first "
                        "(second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * 1' for Mondays at 03:00:00), "
                        "or a descriptor such as @weekly or '@every 168h'.")
    for text, (name, low, high, names) in zip(fields, FIELDS):
        problem = _field_problem(text, low, high, names)
        if problem:
            raise HdapError(f"cron '{cron}': its {name} field '{text}' {problem}.")
    return cron


def _field_problem(text: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return f"has the step '/{step}', which is not a positive whole number"
        if base in ("*", "?"):
            continue
        for value in base.split("-", 1):
            number = names.index(value.upper()) + (low if names and low else 0) if value.upper() in names else \
                int(value) if value.isdigit() else None
            if number is None:
                return f"has '{value}', which is not a number{' or a name' if names else ''}"
            if not low <= number <= high:
                return f"has {number}, outside {low}-{high}"
    return None


def explain_cron(cron: str) -> str:
    """A short reading of a six-field cron or a descriptor, for messages and the schedule's description."""
    if cron.startswith("@"):
        return f"{cron[1:]}" if not cron.startswith("@every") else f"every {cron.split(' ', 1)[1]}"
    second, minute, hour, day, month, weekday = cron.split(" ")
    when = f"at {hour.zfill(2)}:{minute.zfill(2)}:{second.zfill(2)}" if all(f.isdigit() for f in (second, minute, hour)) else \
        f"at second {second}, minute {minute}, hour {hour}"
    on = []
    if weekday not in ("*", "?"):
        on.append(_DAYS[int(weekday)] if weekday.isdigit() and int(weekday) < 7 else f"days of the week {weekday}")
    if day not in ("*", "?"):
        on.append(f"day {day} of the month")
    if month not in ("*", "?"):
        on.append(f"month {month}")
    return (", ".join(on) + " " if on else "every day ") + when
