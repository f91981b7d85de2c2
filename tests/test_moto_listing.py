"""The moto server's listing index and bulk load (cas/testing/moto_scale.py).

Three checks:

- against the running server (the ``s3_server`` fixture): a few hundred random names,
  written by PUT, bulk load, copy, a multipart upload, overwritten and deleted (one by
  one and many at a time); then every page of many ListObjectsV2 / ListObjects
  listings (boto3, small pages) and s3fs's ``find`` / ``ls`` against the listing
  computed here from the set of names the writes left (so a put or a delete the index
  missed fails it);
- in process, moto's backend: the indexed listing against moto's own, on random
  names, versioned buckets with delete markers, and random queries (hypothesis);
- a bulk-loaded object against the same bytes PUT: GET, HEAD, the listing's entry, and
  conditional writes on it.
"""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.testing import servers
from cas.testing.moto_atomic import bulk_put

SEGMENTS = ["a", "ab", "b", "é", "日本", "x y", "z+%", "𝄞", ""]


def _name(rng: random.Random) -> str:
    parts = [rng.choice(SEGMENTS) for _ in range(rng.randint(1, 4))]
    return "/".join(parts) + rng.choice(["", "", "/", ".txt"]) or "k"


def model_pages(names: set[str], prefix: str, delimiter: str, after: str, size: int) -> list[Any]:
    """ListObjectsV2's pages as ``(keys, common prefixes, truncated)``: the names under
    ``prefix``, each rolled up to its common prefix (``prefix`` + up to the first
    ``delimiter`` after it, inclusive) if it has one, in order, those after ``after``
    (a common prefix that is not itself after ``after`` is dropped even if names under
    it are: moto's rule; S3's is not checked here), cut into pages of ``size``."""
    entries: dict[str, bool] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        cut = name.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            entries[name[: cut + len(delimiter)]] = True
        else:
            entries[name] = False
    listed = sorted(e for e in entries if e > after)
    pages = []
    for i in range(0, max(len(listed), 1), size):
        page = listed[i : i + size]
        keys = [e for e in page if not entries[e]]
        folders = [e for e in page if entries[e]]
        pages.append((keys, folders, i + size < len(listed)))
    return pages


def _client(srv: servers.Server) -> Any:
    return boto3.client(
        "s3", endpoint_url=srv.endpoint, region_name=servers.AWS_REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def _v2_pages(client: Any, bucket: str, prefix: str, delimiter: str, after: str, size: int) -> list[Any]:  # fmt: skip
    pages, kwargs = [], {"Bucket": bucket, "Prefix": prefix, "MaxKeys": size}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    if after:
        kwargs["StartAfter"] = after
    while True:
        got = client.list_objects_v2(**kwargs)
        keys = [c["Key"] for c in got.get("Contents", [])]
        folders = [c["Prefix"] for c in got.get("CommonPrefixes", [])]
        assert got["KeyCount"] == len(keys) + len(folders)
        pages.append((keys, folders, got["IsTruncated"]))
        if not got["IsTruncated"]:
            return pages
        kwargs["ContinuationToken"] = got["NextContinuationToken"]
        assert len(pages) < 1000


def _fill(srv: servers.Server, client: Any, rng: random.Random) -> tuple[str, set[str]]:
    """A bucket written every way a client writes: the bucket and its names."""
    bucket = srv.new_bucket("listing")
    names = sorted({_name(rng) for _ in range(400)})
    rng.shuffle(names)
    put, bulk = names[: len(names) // 2], names[len(names) // 2 :]
    for name in put:
        client.put_object(Bucket=bucket, Key=name, Body=name.encode())
    for k in range(0, len(bulk), 50):
        assert bulk_put(srv.endpoint, bucket, [(n, n.encode()) for n in bulk[k : k + 50]]) == len(
            bulk[k : k + 50]
        )
    live = set(names)
    for name in rng.sample(names, 20):  # overwritten: still one name
        client.put_object(Bucket=bucket, Key=name, Body=b"again")
    gone = rng.sample(names, 60)
    for name in gone[:20]:
        client.delete_object(Bucket=bucket, Key=name)
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": n} for n in gone[20:]]})
    live -= set(gone)
    for name in rng.sample(sorted(live), 10):
        target = f"copy/{name}"
        client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": name})
        live.add(target)
    upload = client.create_multipart_upload(Bucket=bucket, Key="multi/part/é")
    part = client.upload_part(
        Bucket=bucket, Key="multi/part/é", UploadId=upload["UploadId"], PartNumber=1, Body=b"p"
    )
    client.complete_multipart_upload(
        Bucket=bucket, Key="multi/part/é", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )  # fmt: skip
    live.add("multi/part/é")
    return bucket, live


def test_server_listings_match_the_names_written(s3_server: servers.Server) -> None:
    rng = random.Random(31)
    client = _client(s3_server)
    bucket, live = _fill(s3_server, client, rng)
    some = sorted(live)
    prefixes = ["", "a", "a/", "ab/", "é", "日本/", "copy/", "nothing/", *rng.sample(some, 4)]
    prefixes += [name[: rng.randint(1, len(name))] for name in rng.sample(some, 4)]
    checked = 0
    for prefix in prefixes:
        for delimiter in ("", "/", "b"):
            for size in (3, 7, 1000):
                for after in ("", rng.choice(some), prefix + "a"):
                    want = model_pages(live, prefix, delimiter, after, size)
                    got = _v2_pages(client, bucket, prefix, delimiter, after, size)
                    assert got == want, (prefix, delimiter, after, size)
                    checked += len(got)
    assert checked > 1000
    # ListObjects (v1): moto pages the keys only, and sends every common prefix on
    # every page; its NextMarker is a token it maps back to the page's last key. It
    # does not url-encode the common prefixes it sends, which boto3 asked for and
    # decodes ('+' comes back as ' '): moto's, before the index as after it
    for prefix, delimiter in (("", "/"), ("a", "/"), ("", ""), ("ab/", "b")):
        whole = model_pages(live, prefix, delimiter, "", 10**6)[0]
        keys, kwargs = [], {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 9}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            got = client.list_objects(**kwargs)
            page = [c["Key"] for c in got.get("Contents", [])]
            assert len(page) <= 9
            keys += page
            sent = [c["Prefix"] for c in got.get("CommonPrefixes", [])]
            assert sent == [urllib.parse.unquote_plus(p) for p in whole[1]]
            if not got["IsTruncated"]:
                break
            kwargs["Marker"] = got["NextMarker"]
        assert keys == whole[0], (prefix, delimiter)
    # s3fs, on names it can tell apart from folders (no empty part, no trailing '/')
    fs = s3_server.filesystem()
    plain = sorted({"s3fs/" + "/".join(rng.choice(SEGMENTS[:-1]) for _ in range(rng.randint(1, 3)))
                    for _ in range(80)})  # fmt: skip
    bulk_put(s3_server.endpoint, bucket, [(n, b"s") for n in plain[::2]])
    fs.pipe({f"{bucket}/{n}": b"s" for n in plain[1::2]})
    fs.rm([f"{bucket}/{n}" for n in plain[::7]])
    kept = sorted(set(plain) - set(plain[::7]))
    assert fs.find(f"{bucket}/s3fs") == [f"{bucket}/{n}" for n in kept]
    for prefix in ("s3fs", "s3fs/a", "s3fs/日本"):
        listed = model_pages(set(kept), prefix + "/", "/", "", 10**6)[0]
        want = sorted(f"{bucket}/{e}".rstrip("/") for e in listed[0] + listed[1])
        assert sorted(fs.ls(f"{bucket}/{prefix}", refresh=True)) == want


def test_bulk_load_stores_what_a_put_stores(s3_server: servers.Server, tmp_path: Path) -> None:
    client = _client(s3_server)
    bucket = s3_server.new_bucket("bulk")
    body = b"the same bytes"
    local = tmp_path / "file.json"
    local.write_bytes(body)
    fs = s3_server.filesystem()
    fs.put(str(local), f"{bucket}/put/file.json")  # s3fs sends the guessed content type
    client.put_object(Bucket=bucket, Key="put/plain", Body=body)
    before = time.time()
    n = bulk_put(s3_server.endpoint, bucket,
                 [("bulk/file.json", body, "application/json"), ("bulk/plain", body)])  # fmt: skip
    assert n == 2
    listed = {c["Key"]: c for c in client.list_objects_v2(Bucket=bucket)["Contents"]}
    for name in ("file.json", "plain"):
        put = client.head_object(Bucket=bucket, Key=f"put/{name}", ChecksumMode="ENABLED")
        bulk = client.head_object(Bucket=bucket, Key=f"bulk/{name}", ChecksumMode="ENABLED")
        assert abs(bulk.pop("LastModified").timestamp() - before) < 60
        put.pop("LastModified")
        put.pop("ResponseMetadata")
        bulk.pop("ResponseMetadata")
        assert bulk == put
        got = client.get_object(Bucket=bucket, Key=f"bulk/{name}")
        assert got["Body"].read() == body
        assert got["ETag"] == put["ETag"] and got["ContentType"] == put["ContentType"]
        a, b = dict(listed[f"put/{name}"]), dict(listed[f"bulk/{name}"])
        for entry in (a, b):
            entry.pop("Key"), entry.pop("LastModified")
        assert a == b
    assert fs.cat_file(f"{bucket}/bulk/plain") == body
    # conditional writes see the loaded object as they see a PUT one
    etag = listed["bulk/plain"]["ETag"]
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="bulk/plain", Body=b"x", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="bulk/plain", Body=b"x", IfMatch='"0" * 32')
    client.put_object(Bucket=bucket, Key="bulk/plain", Body=b"x", IfMatch=etag)
    assert fs.cat_file(f"{bucket}/bulk/plain") == b"x"


def test_bulk_load_refuses_a_missing_bucket(s3_server: servers.Server) -> None:
    with pytest.raises(urllib.error.HTTPError, match="400"):
        bulk_put(s3_server.endpoint, "no-such-bucket-h31", [("k", b"v")])


# -- in process: the index against moto's own listing -----------------------------------

_names = st.lists(
    st.builds(lambda parts, tail: "/".join(parts) + tail,
              st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4),
              st.sampled_from(["", "/", "b", ".txt"])),
    min_size=0, max_size=60,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    names=_names,
    deleted=st.lists(st.integers(0, 59), max_size=20),
    versioned=st.booleans(),
    prefix=st.sampled_from(["", "a", "a/", "ab", "é/", "日本", "𝄞/"]),
    delimiter=st.sampled_from([None, "", "/", "b", "/a", "𝄞"]),
    size=st.integers(0, 12),
    after=st.one_of(st.none(), st.sampled_from(["", "a", "a/b", "ab/", "z", "é/"])),
)
def test_index_lists_as_moto_does(names: list[str], deleted: list[int], versioned: bool,
                                  prefix: str, delimiter: str | None, size: int,
                                  after: str | None) -> None:  # fmt: skip
    from moto.s3.models import s3_backends

    from cas.testing import moto_scale

    backend = s3_backends["123456789012"]["aws"]
    bucket_name = f"index-{random.getrandbits(48):012x}"
    bucket = backend.create_bucket(bucket_name, servers.AWS_REGION)
    try:
        bucket.keys = moto_scale.IndexedKeyStore()
        if versioned:
            backend.put_bucket_versioning(bucket_name, "Enabled")
        for name in names:
            backend.put_object(bucket_name, name, name.encode())
        for i in deleted:  # versioned: a delete marker, the name stays
            if names and names[i % len(names)] in bucket.keys:
                backend.delete_object(bucket_name, names[i % len(names)])
        assert bucket.keys.ordered() == sorted(dict.keys(bucket.keys))

        def both(fn: str, *args: Any) -> tuple[Any, Any]:
            ours = getattr(moto_scale, fn)(backend, bucket, *args)
            theirs = getattr(moto_scale, f"_moto_{fn}")(backend, bucket, *args)
            return ours, theirs

        def plain(result: Any) -> Any:
            return [[getattr(k, "name", k) for k in part] if isinstance(part, list) else part
                    for part in result]  # fmt: skip

        # v2, every page from the first
        token = None
        for _ in range(100):
            ours, theirs = both("list_objects_v2", prefix, delimiter, token, after, size)
            assert plain(ours) == plain(theirs)
            for a, b in zip(ours[0], theirs[0], strict=True):  # the same FakeKeys
                assert a == b if isinstance(a, str) else a is b
            token = ours[2]
            if not token:
                break
        # v1, every page from the first
        marker = after
        for _ in range(100):
            ours, theirs = both("list_objects", prefix, delimiter, marker, size)
            assert plain(ours) == plain(theirs)
            marker = ours[3]
            if not marker:
                break
        ours, theirs = both("list_objects", prefix, delimiter, after, None)
        assert plain(ours) == plain(theirs)
    finally:
        backend.buckets.pop(bucket_name, None)
        s3_backends.bucket_accounts.pop(bucket_name, None)
