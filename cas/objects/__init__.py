"""The object layer: ids, the stored form of one object, chunking, object kinds, and the
object space that keeps them under ``<root>/objects/`` (and, from format 2, in packs).

It knows nothing of names, the catalog or artifacts: those are built on it
(``cas.repo``, ``cas.api``). ``ids`` maps text to ids and ids to hashes; ``codec`` is the
16-byte header and zstd frame; ``chunking`` cuts large content; ``kinds`` holds chunk
lists, trees and what an object points at; ``space`` reads and writes objects on any
:class:`cas.storage.Storage`; ``trees`` stores folders as trees and checks them out.
"""
