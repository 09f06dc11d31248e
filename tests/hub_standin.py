"""A stand-in for the Hugging Face Hub's upload endpoints on 127.0.0.1, for tests that cannot reach the hub: it
answers `create_repo`, the `preupload` check (every file "regular", so its bytes travel inside the commit) and
`create_commit`, checks a README's metadata block as the hub does (`validate-yaml`), and records exactly what a
client sent. Not a test module."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


@dataclass
class Recorded:
    """What clients sent: every request `(method, path)`, created repos, each commit's files `{path: bytes}`, and the
    model cards validated."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    repos: list[dict] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    recorded: Recorded

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        self.recorded.requests.append(("GET", self.path))
        self._reply(404, {"error": "the stand-in serves no downloads"})

    def do_POST(self):
        self.recorded.requests.append(("POST", self.path))
        body = self._body()
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            spec = json.loads(body)
            self.recorded.repos.append(spec)
            repo_id = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
        if parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body)["content"])
        if len(parts) >= 5 and parts[0] == "api" and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if len(parts) >= 5 and parts[0] == "api" and parts[4] == "commit":
            return self._commit("/".join(parts[2:4]), body)
        self._reply(404, {"error": f"the stand-in does not serve {self.path}"})

    def _validate_yaml(self, content: str):
        """The hub checks a README's metadata block: here, that it is YAML holding a mapping."""
        self.recorded.cards.append(content)
        try:
            metadata = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
        except yaml.YAMLError as error:
            return self._reply(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
        if not isinstance(metadata, dict):
            return self._reply(400, {"errors": [{"message": "the metadata block is not a mapping"}]})
        self._reply(200, {"errors": [], "warnings": []})

    def _commit(self, repo_id: str, body: bytes):
        commit = {"repo_id": repo_id, "header": None, "files": {}, "other": []}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                commit["header"] = item["value"]
            elif item["key"] == "file":
                commit["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:  # lfsFile, deletedFile, ...: recorded so that a test sees them
                commit["other"].append(item)
        self.recorded.commits.append(commit)
        oid = "0" * 40
        self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}", "commitOid": oid,
                          "pullRequestUrl": None})


class HubStandIn:
    """Context manager: a recording stand-in for the hub on a free port of 127.0.0.1; `endpoint` is its URL (for
    `HF_ENDPOINT`), `recorded` what it received."""

    def __enter__(self) -> HubStandIn:
        self.recorded = Recorded()
        handler = type("Handler", (_Handler,), {"recorded": self.recorded})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
