"""Maintenance over a repository: ``gc`` (plan, then execute), ``fsck`` (verify and
repair) and ``transfer`` (push and pull between roots)."""
