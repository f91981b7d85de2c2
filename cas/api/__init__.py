"""The faces users call: ``ArtifactStore`` (save, load, open, ...), ``ArtifactCatalog``
(register, search, tag, lineage), the cloud store classes, and the materializers that
turn values into content and back. Each is thin: the work is the repository's."""
