"""A repository in an S3 bucket (AWS or any S3-compatible endpoint: MinIO, Ceph, moto).

Atomicity comes from S3 itself: a PutObject or a completed multipart upload makes the whole object
appear at once, and an aborted multipart upload leaves nothing under the key. A crash between
CreateMultipartUpload and Complete/Abort leaves an incomplete upload that readers never see; a
bucket lifecycle rule (AbortIncompleteMultipartUpload) reclaims its storage.

Every boto3/botocore failure is turned into one line an operator can act on, by ``_s3_errors``;
no message ever carries the access key or the secret key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
import botocore.config
import botocore.exceptions

from backend import faults
from backend.errors import ConfigError, ObjectNotFound, RepositoryError
from backend.repository.base import ObjectInfo, Repository

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

    from backend.config import Config

#: Multipart part size: big enough that a 1 TiB base backup stays far below S3's 10,000-part limit,
#: small enough to buffer in memory.
PART_SIZE = 16 << 20
#: DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
#: A conditional write that another writer beat (409: S3 settling a concurrent conditional write).
_LOST_RACE_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


class S3Repository(Repository):
    name = "s3"

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        cluster: str,
        *,
        where: str = "the environment",
        storage_class: str = "",
        sse: str = "",
        kms_key_id: str = "",
        secrets: Iterable[str] = (),
        part_size: int = PART_SIZE,
    ) -> None:
        self.client = client
        self.bucket = bucket
        parts = [p for p in f"{prefix}/{cluster}".split("/") if p]
        self.root = "/".join(parts) + "/" if parts else ""
        self.part_size = part_size
        self._where = where
        self._secrets = [s for s in secrets if s]
        self._extra: dict[str, Any] = {}
        if storage_class:
            self._extra["StorageClass"] = storage_class
        if sse:
            self._extra["ServerSideEncryption"] = sse
            if sse == "aws:kms" and kms_key_id:
                self._extra["SSEKMSKeyId"] = kms_key_id
        # With AWS_REQUEST_CHECKSUM_CALCULATION=when_required (for stores that reject the newer
        # checksum headers) multipart uploads must not ask for checksums either, or the parts and
        # the completion disagree.
        mode = getattr(client.meta.config, "request_checksum_calculation", None)
        self._checksums = mode != "when_required"

    @classmethod
    def from_config(cls, cfg: Config, *, bucket: str | None = None, root: str | None = None) -> S3Repository:
        """The configured repository; ``bucket``/``root`` override where it points (for s3:// URLs)."""
        s3 = cfg.s3
        if not (bucket or s3.bucket):
            raise ConfigError(f"s3.bucket is missing in {cfg.where()}: set [s3] bucket or BACKUP_S3_BUCKET")
        options: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": 3},
            "connect_timeout": 5,
            "read_timeout": 60,
        }
        if s3.endpoint_url:
            # Most S3-compatible stores serve only http://host/bucket/key, not bucket.host.
            options["s3"] = {"addressing_style": "path"}
        if bool(s3.access_key_id) != bool(s3.secret_access_key):
            raise ConfigError(
                f"only one of s3.access_key_id / s3.secret_access_key is set in {cfg.where()}: "
                "set both (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
                "or neither to use the AWS default chain"
            )
        try:
            session = boto3.session.Session(
                aws_access_key_id=s3.access_key_id or None,
                aws_secret_access_key=s3.secret_access_key or None,
                region_name=s3.region or None,
            )
            client = session.client(
                "s3", endpoint_url=s3.endpoint_url or None, config=botocore.config.Config(**options)
            )
        except botocore.exceptions.ProfileNotFound as exc:
            raise ConfigError(
                f"AWS profile {exc.kwargs.get('profile')!r} (from AWS_PROFILE) does not exist: "
                "fix AWS_PROFILE or unset it"
            ) from None
        except botocore.exceptions.InvalidRegionError:
            raise ConfigError(
                f's3.region in {cfg.where()} is not a valid AWS region (got {s3.region!r}): use e.g. "eu-west-1"'
            ) from None
        except ValueError:
            raise ConfigError(
                f"s3.endpoint_url in {cfg.where()} is not a valid URL (got {s3.endpoint_url!r}): "
                'use e.g. "http://127.0.0.1:9000"'
            ) from None
        return cls(
            client,
            bucket or s3.bucket,
            s3.prefix if root is None else root,
            cfg.cluster.name if root is None else "",
            where=cfg.where(),
            storage_class=s3.storage_class,
            sse=s3.sse,
            kms_key_id=s3.kms_key_id,
            secrets=(s3.access_key_id, s3.secret_access_key),
            part_size=s3.upload_chunk_mb << 20,
        )

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.root.rstrip('/')}"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise RepositoryError(f"invalid object key {key!r}")
        return self.root + key

    @contextlib.contextmanager
    def _s3_errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn any boto3/botocore failure inside the block into a one-line PgdrError."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(exc, action, key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._botocore_error(exc, action, key) from None

    def _target(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self.root}{key}" if key else self.location()

    def _client_error(self, exc: botocore.exceptions.ClientError, action: str, key: str | None) -> RepositoryError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
        bucket = self.bucket
        if code == "NoSuchBucket":
            return RepositoryError(
                f"S3 bucket '{bucket}' does not exist: create it (aws s3 mb s3://{bucket}) "
                f"or fix [s3] bucket in {self._where}"
            )
        if code in _NOT_FOUND_CODES and key is not None:
            return ObjectNotFound(f"{key} is not in the S3 repository {self.location()}")
        if code in _CREDENTIAL_CODES:
            message = (
                f"S3 rejected the credentials for bucket '{bucket}' ({code}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or [s3] access_key_id / secret_access_key"
            )
            if code in ("AccessDenied", "403", "Forbidden"):
                message += f", and that their policy allows s3:{exc.operation_name} on this bucket"
            return RepositoryError(self._redact(message))
        if code == "InvalidStorageClass":
            return RepositoryError(
                f"S3 does not accept storage class {self._extra.get('StorageClass')!r}: "
                f"fix [s3] storage_class in {self._where}"
            )
        detail = _one_line(str(error.get("Message") or ""))
        return RepositoryError(
            self._redact(
                f"S3 failed to {action} {self._target(key)} ({code}{': ' + detail if detail else ''}): "
                "retry, and check the bucket's settings if it persists"
            )
        )

    def _botocore_error(self, exc: botocore.exceptions.BotoCoreError, action: str, key: str | None) -> RepositoryError:
        errors = botocore.exceptions
        if isinstance(exc, errors.ConnectionError | errors.HTTPClientError):
            return RepositoryError(
                self._redact(
                    f"cannot reach S3 endpoint {self.client.meta.endpoint_url}: {_reason(exc)}; "
                    "check [s3] endpoint_url and the network"
                )
            )
        if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
            return RepositoryError(
                f"no S3 credentials for bucket '{self.bucket}': set AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY or [s3] access_key_id / secret_access_key in {self._where}, "
                "or give the host an AWS profile or role"
            )
        if isinstance(exc, errors.IncompleteReadError):
            return RepositoryError(
                f"S3 connection dropped while reading {self._target(key)}: retry, and check the network"
            )
        return RepositoryError(
            self._redact(
                f"S3 failed to {action} {self._target(key)}: {_one_line(str(exc))}; check [s3] in {self._where}"
            )
        )

    def _redact(self, message: str) -> str:
        """A last guard: server and library messages are not ours, so scrub the secrets out of them."""
        for secret in self._secrets:
            message = message.replace(secret, "********")
        return message

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        with self._s3_errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **self._extra)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[_MultipartWriter]:
        upload = _MultipartWriter(self, key, self._key(key))
        try:
            yield upload
            upload.finish()
        except BaseException:
            upload.abort()
            raise

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        full = self._key(key)
        with self._s3_errors("read", key):
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            # Reads happen in the caller's block, so timeouts and dropped connections there are
            # mapped here too.
            with contextlib.closing(body):
                yield cast(BinaryIO, body)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = len(self.root)
        resume: dict[str, Any] = {"StartAfter": self.root + start_after} if start_after else {}
        with self._s3_errors("list", prefix or None):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.root + prefix, **resume):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][start:], obj["Size"], obj["LastModified"].astimezone(UTC))

    def folders(self, prefix: str) -> tuple[str, ...]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = len(self.root + prefix)
        with self._s3_errors("list", prefix or None):
            return tuple(
                common["Prefix"][start:].rstrip("/")
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.root + prefix, Delimiter="/")
                for common in page.get("CommonPrefixes", [])
            )

    def delete(self, keys: Iterable[str]) -> None:
        """Delete in batches; then this host's listing cache lists the repository afresh, so what was
        deleted here is never shown again (the cache sees removed folders anyway, not removed objects)."""
        from backend import listcache

        faults.point("repository-delete")  # expire, holding the lock, about to remove what it planned
        full = [self._key(key) for key in keys]
        if not full:
            return
        try:
            for start in range(0, len(full), DELETE_BATCH):
                self._delete_batch(full[start : start + DELETE_BATCH])
        finally:
            listcache.invalidate(self.location())

    def _delete_batch(self, keys: Sequence[str]) -> None:
        with self._s3_errors("delete objects in", None):
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        failed = answer.get("Errors", [])
        # Some S3-compatible stores (and moto's IAM) authorise the multi-object delete differently
        # from DeleteObject itself: objects it refused are deleted one by one before giving up.
        failed = [f for f in failed if not (f.get("Code") == "AccessDenied" and self._delete_one(f.get("Key", "")))]
        if failed:
            first = failed[0]
            raise RepositoryError(
                f"S3 refused to delete {len(failed)} object(s), e.g. s3://{self.bucket}/{first.get('Key')} "
                f"({first.get('Code')}: {_one_line(first.get('Message', ''))}): "
                "check that the credentials' policy allows s3:DeleteObject"
            )

    def _delete_one(self, full_key: str) -> bool:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full_key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False
        return True

    def cleanup_temporary(self, prefix: str) -> int:
        """Abort multipart uploads a killed writer left: invisible, but billed until aborted."""
        removed = 0
        with self._s3_errors("clean up unfinished uploads in", prefix or None):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) if prefix else self.root):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """An object and its ETag (what ``put_if`` names), None when it is absent."""
        full = self._key(key)
        try:
            with self._s3_errors("read", key):
                answer = self.client.get_object(Bucket=self.bucket, Key=full)
                with contextlib.closing(answer["Body"]) as body:
                    return body.read(), answer["ETag"]
        except ObjectNotFound:
            return None

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> str | None:
        """Store a small object only if it is absent (``etag`` None) or still the version ``etag``.

        S3's conditional writes make this exact between any number of writers: the new ETag, or None
        when another writer got there first. No storage class: a lock must stay readable at once.
        """
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        encryption = {k: v for k, v in self._extra.items() if k != "StorageClass"}
        try:
            answer = self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **condition, **encryption
            )
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _LOST_RACE_CODES or (etag is not None and code in _NOT_FOUND_CODES):
                return None
            raise self._client_error(exc, "write", key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._botocore_error(exc, "write", key) from None
        return answer["ETag"]

    def remove(self, key: str) -> None:
        """Delete one object at once (``delete`` batches, and invalidates the listing cache)."""
        full = self._key(key)
        with self._s3_errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._s3_errors("check", key):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return False
        return True


class _MultipartWriter:
    """Buffers writes into parts; a single PutObject when everything fits in one part.

    A part is sent only once more data than a part has arrived, so the last part is never empty and
    an object of exactly one part size still goes up in one PutObject.
    """

    def __init__(self, repo: S3Repository, key: str, full: str) -> None:
        self._repo = repo
        self._key = key
        self._full = full
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        while len(self._buffer) > self._repo.part_size:
            self._send_part(bytes(self._buffer[: self._repo.part_size]))
            del self._buffer[: self._repo.part_size]
        return len(data)

    def _send_part(self, body: bytes) -> None:
        repo = self._repo
        checksum: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if repo._checksums else {}
        with repo._s3_errors("write", self._key):
            if self._upload_id is None:
                created = repo.client.create_multipart_upload(
                    Bucket=repo.bucket, Key=self._full, **checksum, **repo._extra
                )
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            answer = repo.client.upload_part(
                Bucket=repo.bucket,
                Key=self._full,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                **checksum,
            )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
        if "ChecksumCRC32" in answer:
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        self._parts.append(part)

    def finish(self) -> None:
        repo = self._repo
        if self._upload_id is None:
            repo.put(self._key, bytes(self._buffer))
            return
        self._send_part(bytes(self._buffer))
        self._buffer = bytearray()
        with repo._s3_errors("write", self._key):
            repo.client.complete_multipart_upload(
                Bucket=repo.bucket,
                Key=self._full,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._upload_id = None

    def abort(self) -> None:
        """Best effort: if S3 is unreachable the upload lingers until the bucket's lifecycle rule."""
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        with contextlib.suppress(botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            self._repo.client.abort_multipart_upload(Bucket=self._repo.bucket, Key=self._full, UploadId=upload_id)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    """The OS-level cause ("Connection refused", "Name or service not known") buried in the chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        kwargs = getattr(current, "kwargs", None)
        nested = kwargs.get("error") if isinstance(kwargs, dict) else None
        todo += [
            nested if isinstance(nested, BaseException) else None,
            current.__cause__,
            current.__context__,
        ]
        todo += [arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)]
    if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return "no answer within the read timeout"
    if isinstance(exc, botocore.exceptions.ConnectionClosedError):
        return "the connection was closed"
    return type(exc).__name__
