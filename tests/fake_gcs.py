"""A fake Google Cloud Storage for tests: ``gs://`` run directories with no network.

A job writes ``gs://BUCKET/...`` through two clients, and both are pointed here:

* ``etils.epath`` (the run directory, metrics, manifest, exports) goes through fsspec's
  ``gcs`` protocol, which in production is ``gcsfs``; ``FakeGCSFileSystem`` takes that
  protocol's place.
* Orbax asks google-cloud-storage whether the bucket has a hierarchical namespace; a
  stand-in module answers (it has not).
* Orbax writes the checkpoint arrays with TensorStore's own GCS driver, over HTTP; it is
  pointed at ``FakeGCSServer``, a loopback HTTP server answering the few calls of the
  GCS JSON API that the driver makes (media upload, read with ranges and generation
  conditions, delete, list), through ``TENSORSTORE_GCS_HTTP_URL``. Its token comes from
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` and the metadata server is set to a closed loopback
  port, so nothing leaves the machine.

Both keep the objects in one local folder (``root/BUCKET/NAME``), so processes that a
test starts see the same bucket. Objects behave as on GCS, not as files: a "directory"
exists only while an object is under it (``mkdir`` makes nothing), a write appears whole
when its file is closed, and there is no append.

``install(root)`` points both clients at ``root`` in this process; ``env(server)`` gives
a subprocess the variables for TensorStore, and ``PRELUDE`` is the ``python -c`` prelude
that installs the fsspec side in it.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import pathlib
import threading
import time
import urllib.parse
from typing import Any, Callable

import fsspec

PROTOCOLS = ("gs", "gcs")


def _host_path(root: pathlib.Path, path: str) -> pathlib.Path:
    return root / path.strip("/") if path.strip("/") else root


def _touch_generation(p: pathlib.Path, old: int | None) -> int:
    """Give ``p`` a generation (its mtime in ns) newer than ``old``."""
    ns = max(time.time_ns(), (old or 0) + 1)
    os.utime(p, ns=(ns, ns))
    return p.stat().st_mtime_ns


def _prune(root: pathlib.Path, d: pathlib.Path, stop: pathlib.Path) -> None:
    """Remove the empty folders from ``d`` up to (not including) ``stop``: a GCS prefix
    exists only while it holds objects."""
    while d != stop and d.is_relative_to(stop):
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


class _Upload(io.BytesIO):
    """A write that appears whole at ``close`` (a temporary file renamed into place)."""

    def __init__(self, target: pathlib.Path) -> None:
        super().__init__()
        self._target = target

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            self._target.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._target.with_name(f".upload-{os.getpid()}-{threading.get_ident()}")
            tmp.write_bytes(data)
            old = self._target.stat().st_mtime_ns if self._target.is_file() else None
            os.replace(tmp, self._target)
            _touch_generation(self._target, old)
        super().close()


class FakeGCSFileSystem(fsspec.AbstractFileSystem):
    """fsspec's ``gs``/``gcs`` protocol over ``root`` (set by ``install``)."""

    protocol = PROTOCOLS
    root_marker = ""
    root: pathlib.Path | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # gcsfs' options are ignored
        super().__init__()

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = os.fspath(path) if not isinstance(path, str) else path
        for p in PROTOCOLS:
            if path.startswith(f"{p}://"):
                path = path[len(p) + 3:]
        return path.strip("/")

    def _host(self, path: str) -> pathlib.Path:
        assert self.root is not None, "fake_gcs.install(root) first"
        return _host_path(self.root, self._strip_protocol(path))

    def _entry(self, name: str, p: pathlib.Path) -> dict[str, Any]:
        if p.is_file():
            return {"name": name, "size": p.stat().st_size, "type": "file",
                    "generation": p.stat().st_mtime_ns, "mtime": p.stat().st_mtime}
        return {"name": name, "size": 0, "type": "directory"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        name = self._strip_protocol(path)
        p = self._host(name)
        if p.is_file():
            out = [self._entry(name, p)]
        elif p.is_dir() and (any(p.iterdir()) or "/" not in name):  # a bucket may be empty
            out = [self._entry(f"{name}/{c.name}" if name else c.name, c)
                   for c in sorted(p.iterdir()) if not c.name.startswith(".upload-")]
        else:
            raise FileNotFoundError(path)
        return out if detail else [e["name"] for e in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        name = self._strip_protocol(path)
        p = self._host(name)
        if p.is_file() or (p.is_dir() and (any(p.iterdir()) or "/" not in name)):
            return self._entry(name, p)
        raise FileNotFoundError(path)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        p = self._host(path)
        if "r" in mode:
            if not p.is_file():
                raise FileNotFoundError(path)
            return open(p, "rb")
        if "a" in mode or "+" in mode:
            raise NotImplementedError("objects cannot be appended to")
        return _Upload(p)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        pass  # GCS has no directories: a prefix exists once an object is under it

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass

    def rmdir(self, path: str) -> None:
        pass

    def rm_file(self, path: str) -> None:
        p = self._host(path)
        if not p.is_file():
            raise FileNotFoundError(path)
        p.unlink()
        _prune(self.root, p.parent, self._host(self._strip_protocol(path).split("/")[0]))

    _rm = rm_file

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete objects (a prefix's objects with ``recursive``); the prefix goes with them."""
        paths = [path] if isinstance(path, str) else list(path)
        found = False
        for one in paths:
            p = self._host(one)
            if p.is_file():
                self.rm_file(one)
                found = True
            elif p.is_dir() and recursive:
                for f in sorted(p.rglob("*"), reverse=True):
                    if f.is_file():
                        f.unlink()
                        found = True
                _prune(self.root, p, self._host(self._strip_protocol(one).split("/")[0]))
                for d in sorted((d for d in p.rglob("*") if d.is_dir()), reverse=True) if p.is_dir() else []:
                    _prune(self.root, d, self._host(self._strip_protocol(one).split("/")[0]))
        if not found:
            raise FileNotFoundError(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src = self._host(path1)
        if src.is_dir():
            return  # a "directory" is its objects, which are copied one by one
        with self._open(path2, "wb") as f:
            f.write(src.read_bytes())


class FakeGCSServer:
    """The GCS JSON API calls that TensorStore's ``gcs`` driver makes, on 127.0.0.1."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.lock = threading.Lock()  # one request at a time: conditions are checked and applied together
        self.requests = 0
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: FakeGCSServer

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: bytes | dict | None = None,
               headers: dict[str, str] | None = None) -> None:
        raw = isinstance(body, bytes)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        body = body or b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int) -> None:
        self._reply(code, {"error": {"code": code, "message": "fake gcs"}})

    def _parse(self) -> tuple[str, str | None, dict[str, str], bool]:
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        parts = url.path.split("/")
        upload = parts[1] == "upload"
        if upload:
            parts = parts[1:]
        # /storage/v1/b/<bucket>/o[/<object>]
        bucket = urllib.parse.unquote(parts[4])
        name = urllib.parse.unquote("/".join(parts[6:])) if len(parts) > 6 else None
        return bucket, name, q, upload

    def _meta(self, bucket: str, name: str, p: pathlib.Path) -> dict[str, Any]:
        st = p.stat()
        return {"kind": "storage#object", "bucket": bucket, "name": name,
                "generation": str(st.st_mtime_ns), "metageneration": "1",
                "size": str(st.st_size)}

    def _conditions(self, q: dict[str, str], p: pathlib.Path) -> int | None:
        gen = p.stat().st_mtime_ns if p.is_file() else 0
        if "ifGenerationMatch" in q and int(q["ifGenerationMatch"]) != gen:
            return 412
        if "ifGenerationNotMatch" in q and int(q["ifGenerationNotMatch"]) == gen:
            return 304
        return None

    def do_POST(self) -> None:
        s = self.server_state
        bucket, _, q, upload = self._parse()
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not upload or q.get("uploadType") != "media" or "name" not in q:
            return self._error(501)
        name = q["name"]
        with s.lock:
            s.requests += 1
            p = _host_path(s.root, f"{bucket}/{name}")
            bad = self._conditions(q, p)
            if bad:
                return self._error(412)
            f = _Upload(p)
            f.write(data)
            f.close()
            self._reply(200, self._meta(bucket, name, p))

    def do_GET(self) -> None:
        s = self.server_state
        bucket, name, q, _ = self._parse()
        with s.lock:
            s.requests += 1
            if name is None:
                return self._list(bucket, q)
            p = _host_path(s.root, f"{bucket}/{name}")
            if not p.is_file():
                return self._error(404)
            bad = self._conditions(q, p)
            if bad == 304:
                return self._reply(304, headers={"x-goog-generation": str(p.stat().st_mtime_ns)})
            if bad:
                return self._error(bad)
            if q.get("alt") != "media":
                return self._reply(200, self._meta(bucket, name, p))
            data = p.read_bytes()
            headers = {"x-goog-generation": str(p.stat().st_mtime_ns)}
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start, end = int(a), int(b) if b else len(data) - 1
                if start >= len(data) and len(data):
                    return self._error(416)
                headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
                return self._reply(206, data[start:end + 1], headers)
            self._reply(200, data, headers)

    def _list(self, bucket: str, q: dict[str, str]) -> None:
        root = _host_path(self.server_state.root, bucket)
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and not p.name.startswith(".upload-")) if root.is_dir() else []
        prefix = q.get("prefix", "")
        lo, hi = q.get("startOffset"), q.get("endOffset")
        items = [{"kind": "storage#object", "name": n, "size": str((root / n).stat().st_size),
                  "generation": str((root / n).stat().st_mtime_ns)}
                 for n in names if n.startswith(prefix) and (lo is None or n >= lo)
                 and (not hi or n < hi)]
        self._reply(200, {"kind": "storage#objects", "items": items})

    def do_DELETE(self) -> None:
        s = self.server_state
        bucket, name, q, _ = self._parse()
        with s.lock:
            s.requests += 1
            p = _host_path(s.root, f"{bucket}/{name}")
            if not p.is_file():
                return self._error(404)
            if self._conditions(q, p):
                return self._error(412)
            p.unlink()
            _prune(s.root, p.parent, _host_path(s.root, bucket))
            self._reply(204)


class _Bucket:
    """What Orbax reads of a bucket through google-cloud-storage: a flat namespace."""

    hierarchical_namespace_enabled = False

    def __init__(self, name: str) -> None:
        self.name = name


class _Client:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_bucket(self, name: str) -> _Bucket:
        return _Bucket(name)


def install(root: str | os.PathLike) -> Callable[[], None]:
    """In this process: fsspec's gs/gcs protocol is ``FakeGCSFileSystem`` over ``root``
    (epath's cached filesystems are dropped so that it picks it up), and a stand-in for
    ``google.cloud.storage`` answers Orbax's one question to the bucket (a hierarchical
    namespace or not: not). Returns a function that undoes both."""
    import sys
    import types

    FakeGCSFileSystem.root = pathlib.Path(root)
    FakeGCSFileSystem.clear_instance_cache()
    for p in PROTOCOLS:
        fsspec.register_implementation(p, FakeGCSFileSystem, clobber=True)
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    saved = {k: sys.modules.get(k) for k in ("google.cloud", "google.cloud.storage")}
    cloud = saved["google.cloud"] or types.ModuleType("google.cloud")
    storage = types.ModuleType("google.cloud.storage")
    storage.Client = _Client
    cloud.storage = storage
    sys.modules["google.cloud"], sys.modules["google.cloud.storage"] = cloud, storage
    from orbax.checkpoint._src.path import gcs_utils

    gcs_utils.get_bucket.cache_clear()

    def undo() -> None:
        from fsspec.registry import _registry

        for p in PROTOCOLS:
            _registry.pop(p, None)
        FakeGCSFileSystem.clear_instance_cache()
        backend.fsspec_backend._get_filesystem.cache_clear()
        gcs_utils.get_bucket.cache_clear()
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        if saved["google.cloud"] is not None and hasattr(cloud, "storage") and saved["google.cloud.storage"] is None:
            del cloud.storage

    return undo


def env(server: FakeGCSServer) -> dict[str, str]:
    """The variables that point TensorStore's GCS driver at ``server`` and keep every other
    Google endpoint on a closed loopback port."""
    return {"TENSORSTORE_GCS_HTTP_URL": server.url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token", "GCE_METADATA_ROOT": "127.0.0.1:9",
            "GCE_METADATA_HOST": "127.0.0.1:9", "EPATH_USE_TF": "false",
            "FAKE_GCS_ROOT": str(server.root)}


# ``python -c PRELUDE + "..."`` in a subprocess whose environment has ``env(server)``.
PRELUDE = ("import os, sys; sys.path.insert(0, {tests!r}); import fake_gcs; "
           "fake_gcs.install(os.environ['FAKE_GCS_ROOT']); ")
