"""The lake's filesystem: local directories (file://) or S3 / MinIO (s3://) behind one fsspec interface."""

from __future__ import annotations

from typing import Any

from bankflow.spec.loader import ResolvedSpec


def lake_filesystem(resolved: ResolvedSpec) -> tuple[Any, str]:
    """(fsspec filesystem, root path inside it) for the spec's lake.

    Relative file:// paths are relative to the spec's directory. s3fs is imported only for s3:// lakes, so the
    local environment does not need it.
    """
    lake = resolved.spec.lake
    if lake.scheme == "file":
        from fsspec.implementations.local import LocalFileSystem

        root = resolved.resolve_path(lake.url).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return LocalFileSystem(auto_mkdir=True), str(root)
    if lake.scheme == "s3":
        try:
            import s3fs
        except ImportError:  # pragma: no cover - depends on the installation
            raise RuntimeError("an s3:// lake needs s3fs: pip install 'bankflow[stack]'") from None
        client_kwargs: dict[str, Any] = {"region_name": lake.s3_region}
        if lake.s3_endpoint:
            client_kwargs["endpoint_url"] = lake.s3_endpoint
        fs = s3fs.S3FileSystem(key=lake.s3_key, secret=lake.s3_secret, client_kwargs=client_kwargs,
                               anon=False)
        return fs, lake.url.removeprefix("s3://").rstrip("/")
    raise ValueError(f"unsupported lake url {lake.url!r}")
