"""Faults the fake model can be asked for, as the fault suite and the soak benchmark mix them."""

from __future__ import annotations

# The fault mix the suite (and bench/soak.py) drives: (weight, message, how the client behaves);
# "leave" = the client hangs up after a few events.
MIX: list[tuple[int, str, str]] = [
    (30, "hello [[words:8]]", "read"),
    (10, "slow [[words:30]] [[slow:0.02]]", "leave"),
    (6, "limited [[status:429]]", "read"),
    (6, "overloaded [[status:529]]", "read"),
    (6, "broken [[status:500]]", "read"),
    (6, "flaky [[fail_first:1:529]]", "read"),
    (6, "mid [[words:6]] [[midstream_error]]", "read"),
    (6, "drop [[words:6]] [[drop]]", "read"),
    (4, "hang [[hang]]", "read"),
    (6, "late [[delay_first:0.3]]", "leave"),
]
