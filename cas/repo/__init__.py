"""The repository: one root's storage, object space, refs, catalog journal and local
catalog together (as restic's ``repository`` and dulwich's ``Repo``), with name
resolution, commits of artifact records, and leaf errors translated into cas's tree.

``ArtifactStore`` and ``ArtifactCatalog`` (``cas.api``) are thin faces over it; gc,
fsck, transfer (``cas.admin``) and the command line use it, never a store's insides.
"""
