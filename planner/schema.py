"""The schema version every JSON file this package writes carries, and the rule that checks it.

Readers refuse files of another version, so a field's meaning never changes under an old file.

Examples
--------
>>> SCHEMA_RULE.accepts(SCHEMA_VERSION), SCHEMA_RULE.accepts("1")
(True, False)
"""

from __future__ import annotations

from hierfedlora.planner.rules import Rule

__all__ = ["SCHEMA_RULE", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
"""Version of every JSON file this package writes; readers refuse other versions."""

SCHEMA_RULE = Rule(f"{SCHEMA_VERSION} (this package's schema version)", lambda v: v == SCHEMA_VERSION, (0, 2, "1"))
