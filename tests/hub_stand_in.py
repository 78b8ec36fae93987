"""Local stand-ins for the Hugging Face Hub, so that the example scripts' Hub-facing flags are tested offline.

`LocalHub` is a small HTTP server that answers `huggingface_hub`'s file downloads
(``/<repo>/resolve/<revision>/<file>`` and the dataset form ``/datasets/<repo>/...``) and, with ``model_api=True``,
model-info requests (``/api/models/<repo>``, which `HfApi.repo_exists` reads; clients then download by commit id) from
local folders, and records every request with its Authorization header; everything else gets a 404, as the Hub gives
for a missing repository or file. `FakeHfApi` replaces `huggingface_hub.HfApi` for uploads: it records its token and
the calls (repository creation, commits with their file contents) in an event list that the tests also write their
own events to.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub


class LocalHub:
    """Serves ``repos[(repo_type, repo_id, revision)] = folder``; ``requests`` lists (method, path, authorization)."""

    def __init__(self, model_api=False):
        self.repos, self.requests, self.model_api = {}, [], model_api
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body):
                hub.requests.append((self.command, unquote(self.path), self.headers.get("authorization")))
                path = unquote(self.path.split("?")[0])
                data, commit = hub.model_info(path)
                if data is None and (file := hub.resolve(path)) is not None:
                    data, commit = file.read_bytes(), hub.commit_of(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def add(self, repo_id, folder, revision="main", repo_type="model"):
        self.repos[(repo_type, repo_id, revision)] = Path(folder)

    @staticmethod
    def commit(repo_type, repo_id, revision):
        """The commit id the stand-in gives a served revision (the Hub answers with one; clients may use it)."""
        return hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode()).hexdigest()

    def _served(self, repo_type, repo_id, revision):
        """(folder, revision) of a served repository, the revision given by name or by its `commit` id."""
        for (kind, repo, name), folder in self.repos.items():
            if (kind, repo) == (repo_type, repo_id) and revision in (name, self.commit(kind, repo, name)):
                return folder, name
        return None, None

    def _resolve_parts(self, path):
        parts = path.strip("/").split("/")
        repo_type = "model"
        if parts and parts[0] == "datasets":
            repo_type, parts = "dataset", parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        return repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:])

    def resolve(self, path):
        """The local file for a ``resolve`` URL path, or None."""
        if (parts := self._resolve_parts(path)) is None:
            return None
        folder, _ = self._served(*parts[:3])
        file = folder / parts[3] if folder else None
        return file if file is not None and file.is_file() else None

    def commit_of(self, path):
        repo_type, repo_id, revision, _ = self._resolve_parts(path)
        return self.commit(repo_type, repo_id, self._served(repo_type, repo_id, revision)[1])

    def model_info(self, path):
        """(JSON, commit id) answering ``/api/models/<repo>[/revision/<revision>]`` for a served model repository, or
        (None, None)."""
        parts = path.strip("/").split("/")
        if (
            not self.model_api
            or parts[:2] != ["api", "models"]
            or len(parts) not in (4, 6)
            or (len(parts) == 6 and parts[4] != "revision")
        ):
            return None, None
        repo_id = "/".join(parts[2:4])
        folder, revision = self._served("model", repo_id, parts[5] if len(parts) == 6 else "main")
        if folder is None:
            return None, None
        files = [{"rfilename": f.relative_to(folder).as_posix()} for f in sorted(folder.rglob("*")) if f.is_file()]
        commit = self.commit("model", repo_id, revision)
        return json.dumps({"id": repo_id, "sha": commit, "siblings": files}).encode(), commit

    def paths(self, method="GET"):
        return [path for m, path, _ in self.requests if m == method]

    def serve(self):
        """Serve in a thread (for child processes, pointed here by ``HF_ENDPOINT=hub.endpoint``)."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def start(self, monkeypatch):
        """Serve in a thread and point huggingface_hub's downloads at this server (undone by ``monkeypatch``)."""
        self.serve()
        constants = huggingface_hub.constants
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class FakeHfApi:
    """`huggingface_hub.HfApi` for uploads, recording into ``events`` (shared with the test); never uses the network."""

    events = []
    user = "hub-user"

    def __init__(self, token=None, **kwargs):
        self.token = token
        FakeHfApi.events.append(("HfApi", {"token": token}))

    def whoami(self, *args, **kwargs):
        FakeHfApi.events.append(("whoami", {}))
        return {"name": FakeHfApi.user, "type": "user"}

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.events.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        FakeHfApi.events.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, repo_id, operations, **kwargs):
        contents = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        FakeHfApi.events.append(("create_commit", {"repo_id": repo_id, "contents": contents, **kwargs}))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0123",
            commit_message=kwargs.get("commit_message", ""),
            commit_description="",
            oid="0123",
        )

    def upload_folder(self, *args, **kwargs):  # the scripts must publish through push_folder's single commit
        raise AssertionError("upload_folder called: the examples publish through hf_medmamba.tools.hub.push_folder")

    upload_file = upload_folder


def names(events):
    return [name for name, _ in events]
